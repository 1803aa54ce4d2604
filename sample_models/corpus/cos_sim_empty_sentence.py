# Source: https://github.com/huggingface/sentence-transformers/issues/589
# Mechanism: sentence embeddings are the mean of word vectors with padding_idx=0 (a zero vector); a sentence whose
# words are all out of vocabulary (all index 0) embeds to the zero vector, and a hand-written cosine similarity
# dot / (|a| |b|) is 0 / 0 = NaN for it.
import torch
from torch import nn
import torch.nn.functional as F


class SiameseBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32, padding_idx=0)

    def forward(self, left, right):
        a = self.emb(left).mean(1)
        b = self.emb(right).mean(1)
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))  # nandoctor: origin


def build_model():
    return SiameseBag()


def get_batch(step):
    left = torch.randint(1, 100, (16, 6))
    right = torch.randint(1, 100, (16, 6))
    right[3] = 0                                   # every word of this sentence was out of vocabulary
    return (left, right), torch.randint(0, 2, (16,)).float()


def loss_fn(cos, same):
    return F.mse_loss(cos, same * 2 - 1)
