"""Masked-language-model pretraining of a small Hugging Face BERT built from a config."""
import torch
from transformers import BertConfig, BertForMaskedLM


def build_model():
    config = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    return BertForMaskedLM(config)


def get_batch(step):
    ids = torch.randint(5, 300, (4, 24))
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape) < (0.15 if step < 3 else 0.0)
    labels[chosen] = ids[chosen]
    inputs = ids.masked_fill(chosen, 4)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}, None
