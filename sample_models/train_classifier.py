"""A plain PyTorch training script that goes NaN: the bundled sample for `nandoctor run`.

    python sample_models/train_classifier.py                 # prints the losses, then nan
    nandoctor run sample_models/train_classifier.py          # stops at the first Inf and says why

An ordinary loop (argparse, a DataLoader, Adam) whose loss takes the log of a softmax. As the
classifier grows confident, a softmax probability underflows to exactly 0 in float32 and
`torch.log(0)` is -inf: the loss is Inf, every gradient NaN. The fix is `log_softmax` (or handing
the logits to `F.cross_entropy`).
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    torch.manual_seed(0)
    features = torch.randn(2048, 32)
    labels = (features[:, :8].sum(dim=1) > 0).long() + 2 * (features[:, 8:16].sum(dim=1) > 0).long()
    loader = DataLoader(TensorDataset(features, labels), batch_size=args.batch_size, shuffle=True)

    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    for epoch in range(args.epochs):
        for x, y in loader:
            logits = model(x)
            log_probs = torch.log(torch.softmax(logits, dim=-1))
            loss = F.nll_loss(log_probs, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
