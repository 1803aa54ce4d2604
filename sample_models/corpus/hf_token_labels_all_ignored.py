# Source: https://github.com/tum-ai/number-token-loss/issues/73
# Mechanism: a BERT token classifier (built from a config, no download) gets a batch in which every label is -100
# (only sub-word continuations and padding, label_all_tokens=False): the model's CrossEntropyLoss is a mean over
# zero elements, 0/0 = NaN, at step 2.
import torch
from transformers import BertConfig, BertForTokenClassification


def build_model():
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=5)
    return BertForTokenClassification(config)


def get_batch(step):
    ids = torch.randint(5, 120, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 9:] = 0
    labels = torch.randint(0, 5, (4, 12))
    labels[mask == 0] = -100
    labels[:, 0] = -100          # [CLS]
    if step == 2:
        labels[:] = -100         # a batch of sub-word continuations only  # nandoctor: origin
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, None
