"""A training script that uses most of today's stack at once, for `nandoctor run`
(tests/test_compat.py): Accelerate's prepared model, optimizer and DataLoader, gradient
accumulation over 2 micro-batches, a weight_norm-parametrized input layer, activation
checkpointing (a non-reentrant block, then a reentrant one), F.scaled_dot_product_attention,
and a frozen nn.MultiheadAttention teacher run in eval mode under no_grad (its fused fast path).

`python stack_script.py SITE` puts one NaN into step 2's second micro-batch (loader batches 4
and 5 make step 2): SITE `checkpoint` zeroes sample 21, whose |h| = sqrt(h * h) has a 0 * inf
gradient, met first in the backward of the last block, the reentrant one; `teacher` pads every
key of sample 21, which the fast path turns into NaN; `none` runs healthy.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader, TensorDataset

SITE = sys.argv[1] if len(sys.argv) > 1 else "none"


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, h, keep):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v) * keep
        return torch.sqrt(h * h + 0.0)                          # |h|: its gradient at 0 is 0 * inf


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = parametrizations.weight_norm(nn.Linear(8, 8))
        self.mix = Block()
        self.block = Block()
        self.teacher = nn.MultiheadAttention(8, 2, batch_first=True)
        self.teacher.requires_grad_(False)
        self.head = nn.Linear(8, 1)

    def forward(self, x, padding):
        keep = (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)   # an all-zero token stays zero
        h = self.inp(x) * keep
        h = checkpoint(self.mix, h, keep, use_reentrant=False)
        h = checkpoint(self.block, h, keep, use_reentrant=True)
        self.teacher.eval()
        with torch.no_grad():
            target, _ = self.teacher(x, x, x, key_padding_mask=padding, need_weights=False)
        return self.head(h).mean() + (h - target).pow(2).mean()


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, 8, generator=g)
    padding = torch.zeros(32, 5, dtype=torch.bool)
    padding[:, 4] = True
    if SITE == "checkpoint":
        x[5 * 4 + 1] = 0.0                     # batch 5: the second micro-batch of step 2
    elif SITE == "teacher":
        padding[5 * 4 + 1] = True
    return TensorDataset(x, padding)


def main():
    from accelerate import Accelerator
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(make_data(), batch_size=4)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    for x, padding in loader:
        with accelerator.accumulate(model):
            loss = model(x, padding)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
    print("checksum", round(sum(p.double().sum().item() for p in model.parameters()), 6))


if __name__ == "__main__":
    main()
