# Source: https://github.com/yichen928/ActiveFT/issues/4
# Mechanism: a hand-written InfoNCE loss exponentiates cosine similarities divided by a temperature of 0.07; under
# float16 autocast exp(1/0.07) ~ 1.6e6 overflows to inf and inf / inf = NaN. Float32 is finite.
import torch
from torch import nn
import torch.nn.functional as F

TAU = 0.07


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(48, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.proj = nn.Linear(128, 32)

    def forward(self, a, b):
        return F.normalize(self.proj(self.backbone(a)), dim=1), F.normalize(self.proj(self.backbone(b)), dim=1)


def build_model():
    return Encoder()


def get_batch(step):
    x = torch.randn(16, 48)
    return (x + 0.01 * torch.randn_like(x), x + 0.01 * torch.randn_like(x)), None


def loss_fn(outputs, _):
    za, zb = outputs
    sim = za @ zb.T / TAU
    exp_sim = torch.exp(sim)  # nandoctor: origin
    pos = exp_sim.diagonal()
    return -torch.log(pos / exp_sim.sum(dim=1)).mean()
