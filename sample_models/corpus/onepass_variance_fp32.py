# Source: https://github.com/Project-MONAI/MONAI/issues/1868
# Mechanism: local variance computed as E[x^2] - E[x]^2 cancels catastrophically for large, nearly constant values; a slightly negative variance under sqrt is NaN.
import torch
from torch import nn


class LocalContrastNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5, padding=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        pool = nn.functional.avg_pool1d
        mean = pool(x, 9, stride=1, padding=4, count_include_pad=False)
        mean_sq = pool(x * x, 9, stride=1, padding=4, count_include_pad=False)
        std = torch.sqrt(mean_sq - mean * mean)  # nandoctor: origin
        h = self.conv((x - mean) / (std + 1e-3))
        return self.head(h.mean(dim=-1))


def build_model():
    return LocalContrastNorm()


def get_batch(step):
    x = 3000.0 + 0.01 * torch.randn(8, 1, 64)   # raw sensor counts: a large offset, tiny fluctuations
    return x, torch.randint(0, 2, (8,))
