"""A Hugging Face GPT-2 built from a config (no weights download), trained with its own
`labels` loss (keyword inputs, a ModelOutput with `.loss`). Should scan clean."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build_model():
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config)


def get_batch(step):
    ids = torch.randint(0, 256, (4, 32))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, None


def build_optimizer(params):
    return torch.optim.AdamW(params, lr=5e-4, eps=1e-6)  # eps float16 can hold
