"""Distillation from a frozen attention teacher run in eval mode under no_grad: there
nn.MultiheadAttention takes its fused fast path, which turns a fully padded sample (step 2) into
NaN where the slow path returns zeros (tests/test_compat.py)."""
import torch
from torch import nn


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.teacher = nn.MultiheadAttention(8, 2, batch_first=True)
        self.teacher.requires_grad_(False)

    def forward(self, x, padding):
        self.teacher.eval()
        with torch.no_grad():
            target, _ = self.teacher(x, x, x, key_padding_mask=padding, need_weights=False)
        return (self.proj(x) - target).pow(2).mean()


def build_model():
    return Student()


def get_batch(step):
    x = torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[:, 4] = True
    if step == 2:
        padding[1] = True                    # an empty sample: every key padded
    return x, padding


def training_step(model, batch):
    x, padding = batch
    return model(x, padding)
