# Source: https://github.com/pytorch/pytorch/issues/4534
# Mechanism: a tabular MLP with BatchNorm1d; the dataset size leaves a last batch of one sample (no drop_last), and
# BatchNorm1d in training mode raises "Expected more than 1 value per channel when training" on it.
import torch
from torch import nn

N_SAMPLES = 49          # 3 batches of 16, then one sample left over
BATCH_SIZE = 16


class TabularNet(nn.Module):
    def __init__(self, n_features=20, hidden=64, n_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.fc1(x)))  # nandoctor: origin
        h = torch.relu(self.bn2(self.fc2(h)))
        return self.out(h)


def build_model():
    return TabularNet()


_g = torch.Generator().manual_seed(0)
_X = torch.randn(N_SAMPLES, 20, generator=_g)
_Y = torch.randint(0, 3, (N_SAMPLES,), generator=_g)


def get_batch(step):
    n_batches = (N_SAMPLES + BATCH_SIZE - 1) // BATCH_SIZE      # DataLoader(drop_last=False)
    i = step % n_batches
    sl = slice(i * BATCH_SIZE, (i + 1) * BATCH_SIZE)
    return _X[sl], _Y[sl]
