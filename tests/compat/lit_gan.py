"""A GAN in Lightning's manual optimization (tests/test_compat.py): each training_step steps
the discriminator, then the generator, with their own optimizers. A zero real sample in batch
`bad` (sample 4 * bad + 1) puts 0 * inf into the discriminator's backward (|h| = sqrt(h * h) at 0)."""
import lightning as L
import torch
from torch import nn


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        h = self.inp(x) * (x.abs().sum(-1, keepdim=True) > 0)
        return self.out(torch.sqrt(h * h))


class LitGAN(L.LightningModule):
    def __init__(self, lr=0.01):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
        self.discriminator = Discriminator()

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        bce = nn.functional.binary_cross_entropy_with_logits
        fake = self.generator(torch.randn(real.shape[0], 2))
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        d_out = self.discriminator(fake)
        loss_g = bce(d_out, torch.ones_like(d_out))
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.generator.parameters(), lr=self.hparams.lr),
                torch.optim.SGD(self.discriminator.parameters(), lr=self.hparams.lr)]


def get_loader(bad=2):
    real = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    if bad is not None:
        real[4 * bad + 1] = 0.0
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(real), batch_size=4)


if __name__ == "__main__":         # `python lit_gan.py` (and `nandoctor run lit_gan.py`)
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitGAN(), get_loader())
