"""Mirrors pytorch/examples mnist/main.py (commit 77f55b9): a small conv net ending in
log_softmax, F.nll_loss, Adadelta at lr 1.0 with StepLR(gamma=0.7), train()/test() per epoch over
DataLoaders, `--dry-run`. The images are 8x8 digits (label, 64 pixels per CSV row) instead of MNIST.

Healthy: nothing injected. `nandoctor run` must pass it and let its output through.
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    """conv-relu, conv-relu, max-pool, dropout, fc-relu, dropout, fc, log_softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 8))

    def forward(self, x):
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


def run_epoch(model, loader, optimizer, epoch, log_interval, dry_run):
    model.train()
    for i, (images, labels) in enumerate(loader):
        optimizer.zero_grad()
        loss = F.nll_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        if i % log_interval == 0:
            print(f"Train Epoch: {epoch} [{i * len(images)}/{len(loader.dataset)}]\tLoss: {loss.item():.6f}")
            if dry_run:
                break


@torch.no_grad()
def evaluate(model, loader):
    model.eval()
    summed, hits = 0.0, 0
    for images, labels in loader:
        log_probs = model(images)
        summed += F.nll_loss(log_probs, labels, reduction="sum").item()
        hits += (log_probs.argmax(dim=1) == labels).sum().item()
    n = len(loader.dataset)
    print(f"\nTest set: Average loss: {summed / n:.4f}, Accuracy: {hits}/{n}\n")


def main():
    parser = argparse.ArgumentParser(description="8x8 digits example")
    parser.add_argument("--data", type=str, default="data/digits.csv")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--test-batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    table = torch.from_numpy(np.loadtxt(args.data, delimiter=",", dtype=np.float32))
    labels, images = table[:, 0].long(), (table[:, 1:].reshape(-1, 1, 8, 8) - 0.3) / 0.3
    train_loader = DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(TensorDataset(images[64:], labels[64:]), batch_size=args.test_batch_size)

    model = Net()
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        run_epoch(model, train_loader, optimizer, epoch, args.log_interval, args.dry_run)
        evaluate(model, test_loader)
        scheduler.step()


if __name__ == "__main__":
    main()
