"""Mirrors Lightning-AI/pytorch-lightning examples/pytorch/basics/backbone_image_classifier.py
(commit 7f0c343): a Backbone nn.Module inside a LightningModule that calls
save_hyperparameters(ignore=["backbone"]), training_step returning F.cross_entropy and logging it,
configure_optimizers returning Adam(lr=self.hparams.learning_rate), a LightningDataModule with
random_split, trainer.fit then trainer.test. Argparse stands in for LightningCLI; the images are
8x8 digits (label, 64 pixels per CSV row).

Injected bug (in expected.yaml): `--data data/digits_corrupt.csv`, whose row 18 holds one NaN pixel.
The batch that carries it gives NaN logits and a NaN loss, and Adam writes NaN into the weights;
Lightning trains on silently.
"""
import argparse

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

import lightning as L


class Backbone(torch.nn.Module):
    def __init__(self, hidden_dim=32):
        super().__init__()
        self.l1 = torch.nn.Linear(64, hidden_dim)
        self.l2 = torch.nn.Linear(hidden_dim, 8)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.l2(torch.relu(self.l1(x)))


class LitClassifier(L.LightningModule):
    def __init__(self, backbone=None, learning_rate: float = 1e-3):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone if backbone is not None else Backbone()

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("test_loss", loss)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class DigitsDataModule(L.LightningDataModule):
    """80 training and 16 test rows of a CSV (label, 64 pixels), split once with a fixed seed."""

    def __init__(self, path: str, batch_size: int = 16):
        super().__init__()
        table = torch.from_numpy(np.loadtxt(path, delimiter=",", dtype=np.float32))
        rows = TensorDataset(table[:, 1:], table[:, 0].long())
        self.splits = dict(zip(("fit", "test"), random_split(rows, [80, 16], generator=torch.Generator().manual_seed(42))))
        self.batch_size = batch_size

    def loader(self, stage):
        return DataLoader(self.splits[stage], batch_size=self.batch_size)

    def train_dataloader(self):
        return self.loader("fit")

    def test_dataloader(self):
        return self.loader("test")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/digits.csv")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_epochs", type=int, default=2)
    args = parser.parse_args()
    L.seed_everything(1234)
    model = LitClassifier(learning_rate=args.learning_rate)
    datamodule = DigitsDataModule(args.data)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.max_epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=datamodule)
    print(trainer.test(model, datamodule=datamodule, verbose=False))


if __name__ == "__main__":
    main()
