"""LightningModules for NanDoctorCallback with torch.func and torch.compile (tests/test_compat.py):
`LitPerSample` maps its network over the samples with torch.func.vmap in training_step; the sqrt
of a shifted target goes NaN in batch 2 (sample 9). `LitRegressor` is the plain module that the
test compiles (`torch.compile(module)`); batch 2 carries x < -5, where sqrt(x + 5) is NaN."""
import lightning as L
import torch
from torch import nn
from torch.func import functional_call, vmap


class LitPerSample(L.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        params = dict(self.net.named_parameters())

        def per_sample(xi, yi):
            out = functional_call(self.net, params, (xi.unsqueeze(0),)).squeeze()
            return (out - yi) ** 2 * torch.sqrt(yi + 4.0)
        return vmap(per_sample)(x, y).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class LitRegressor(L.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x) * torch.sqrt(x[:, :1] + 5.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y.unsqueeze(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def get_loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 4, generator=g), torch.randn(24, generator=g)
    x[9, 0], y[9] = -7.0, -6.0
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
