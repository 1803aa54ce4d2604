"""The model of the distributed tests: a NaN can be born in the batch (data) or in the forward of
the `head` module (log of a negative when x < -8)."""
import torch
from torch import nn


class LogHead(nn.Module):
    def forward(self, h, x):
        return h + torch.log(x[:, :1] + 8.0)           # NaN when x < -8: born in forward


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
        self.head = LogHead()

    def forward(self, x):
        return self.head(self.body(x), x)


def build_model():
    return Net()


def training_step(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def shard_fsdp2(net):
    """FSDP2 as the tests use it: each trainable layer of the body its own unit, then the whole."""
    from torch.distributed.fsdp import fully_shard
    for layer in net.body:
        if any(p.requires_grad for p in layer.parameters()):
            fully_shard(layer)
    fully_shard(net)
    return net
