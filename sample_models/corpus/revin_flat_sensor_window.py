# Source: https://github.com/google-research/timesfm/issues/522
# Mechanism: instance normalisation of each input window, (x - mean) / std, with no guard for a flat window.
# The stream is fine until step 37, when one sensor is stuck (a constant reading): std = 0 and its window is
# 0 / 0 = NaN. Fails only after step 30.
import torch
from torch import nn


class RevINForecaster(nn.Module):
    def __init__(self, lookback=48, horizon=12):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(lookback, 64), nn.ReLU(), nn.Linear(64, horizon))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        z = (x - mean) / std  # nandoctor: origin
        return self.net(z) * std + mean


def build_model():
    return RevINForecaster()


def get_batch(step):
    t = torch.arange(60, dtype=torch.float32) + step
    phase = torch.rand(16, 1) * 6.28
    series = torch.sin(t / 5 + phase) + 0.1 * torch.randn(16, 60)
    if step == 37:
        series[5] = 21.5                       # a stuck sensor: every reading identical
    return series[:, :48], series[:, 48:]
