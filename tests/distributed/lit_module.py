"""The LightningModule of the distributed Lightning test (importable, so `replay --trust` rebuilds it)."""
import lightning
import torch
from torch import nn

from model import build_model


class Module(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = build_model()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class ShardedModule(Module):
    """The same module under Lightning's ModelParallelStrategy: FSDP2's fully_shard per layer."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard
        for layer in self.net.body:
            if any(p.requires_grad for p in layer.parameters()):
                fully_shard(layer)
        fully_shard(self.net)
