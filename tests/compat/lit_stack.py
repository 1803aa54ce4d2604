"""A LightningModule on the modern stack, for NanDoctorCallback (tests/test_compat.py): a
weight_norm-parametrized input layer, activation checkpointing (a non-reentrant block, then a
reentrant one), F.scaled_dot_product_attention, and a frozen nn.MultiheadAttention teacher run in
eval mode under no_grad (its fused fast path outside autocast).

`site` puts one NaN/Inf into sample 9 (batch 2 at batch size 4): `checkpoint` zeroes it, and
|h| = sqrt(h * h) of the last (reentrant) block has a 0 * inf gradient; `teacher` pads every key,
which the fast path turns into NaN; `overflow` scales it by 3e4, past float16 in `inp`
(the 16-mixed run). `get_loader` serves the batches with one worker process.
"""
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, h, keep):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + F.scaled_dot_product_attention(q, k, v) * keep
        return torch.sqrt(h * h + 0.0)                          # |h|: its gradient at 0 is 0 * inf


class StackRegressor(L.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.inp = parametrizations.weight_norm(nn.Linear(8, 8))
        self.mix = Block()
        self.block = Block()
        self.teacher = nn.MultiheadAttention(8, 2, batch_first=True)
        self.teacher.requires_grad_(False)
        self.head = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, padding = batch
        keep = (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)
        h = self.inp(x) * keep
        h = checkpoint(self.mix, h, keep, use_reentrant=False)
        h = checkpoint(self.block, h, keep, use_reentrant=True)
        self.teacher.eval()
        with torch.no_grad():
            target, _ = self.teacher(x, x, x, key_padding_mask=padding, need_weights=False)
        return self.head(h).float().mean() + (h.float() - target.float()).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def get_loader(site, workers=1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, 8, generator=g)
    padding = torch.zeros(24, 5, dtype=torch.bool)
    padding[:, 4] = True
    if site == "checkpoint":
        x[9] = 0.0
    elif site == "teacher":
        padding[9] = True
    elif site == "overflow":
        x[9] = x[9] * 3e4
    dataset = torch.utils.data.TensorDataset(x, padding)
    return torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers)


if __name__ == "__main__":         # `nandoctor run lit_stack.py SITE`: Lightning's own loop
    import sys
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(StackRegressor(), get_loader(sys.argv[1], workers=0))
