# Source: https://github.com/huggingface/trl/pull/7252
# Mechanism: invalid tokens are set to -inf with index_put_; the entropy bonus -(p * log p) multiplies p = 0 by log p = -inf, giving NaN.
import torch
from torch import nn


class Policy(nn.Module):
    def __init__(self, vocab=20):
        super().__init__()
        self.net = nn.Linear(16, vocab)

    def forward(self, x, invalid_rows, invalid_cols):
        logits = self.net(x)
        logits = logits.index_put((invalid_rows, invalid_cols), torch.tensor(float("-inf"), dtype=logits.dtype))
        logp = torch.log_softmax(logits, dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)  # nandoctor: origin
        return logp, entropy


def build_model():
    return Policy()


def get_batch(step):
    rows = torch.arange(8).repeat_interleave(3)
    cols = torch.randint(0, 20, (24,))
    actions = torch.randint(0, 20, (8,))
    actions = torch.where(actions == cols.view(8, 3)[:, 0], (actions + 1) % 20, actions)
    return (torch.randn(8, 16), rows, cols), actions


def loss_fn(outputs, actions):
    logp, entropy = outputs
    picked = logp.gather(1, actions[:, None]).squeeze(1).clamp(min=-50)
    return -(picked.mean() + 0.01 * entropy.mean())
