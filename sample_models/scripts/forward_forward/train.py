"""Mirrors pytorch/examples mnist_forward_forward/main.py (commit 77f55b9): Hinton's
Forward-Forward training. Each Layer is an nn.Linear that holds its own Adam and trains itself
in its own loop; the loop calls `self.forward(x)` as a method (never `layer(x)`, so no module
call is ever made) and the loss is `log1p(exp(...))` of the layer's "goodness" (mean squared
activation) against a threshold, for positive and negative samples. The network is a plain list
of layers trained one after the other. Random 64-pixel inputs with a one-hot label overlaid on
the first 10 pixels stand in for MNIST.

Injected bug (in expected.yaml): `--lr 3` (the default is 0.03). One Adam step of size ~3 makes
the squared activations reach hundreds, exp() overflows float32 (the loss is inf at step 1) and
its backward is inf/inf = NaN.
"""
import argparse

import torch
from torch import nn

PIXELS, HIDDEN, CLASSES = 64, 32, 10


def overlay_label(x, y):
    x = x.clone()
    x[:, :CLASSES] = 0.0
    x[range(x.shape[0]), y] = x.max()
    return x


class Layer(nn.Linear):
    def __init__(self, in_features, out_features, lr, threshold, epochs):
        super().__init__(in_features, out_features)
        self.opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.threshold, self.epochs = threshold, epochs

    def forward(self, x):
        direction = x / (x.norm(2, 1, keepdim=True) + 1e-4)
        return torch.relu(direction @ self.weight.T + self.bias)

    def train_layer(self, x_pos, x_neg, log_every):
        for i in range(self.epochs):
            goodness_pos = self.forward(x_pos).pow(2).mean(1)
            goodness_neg = self.forward(x_neg).pow(2).mean(1)
            loss = torch.log1p(torch.exp(torch.cat([-goodness_pos + self.threshold,
                                                    goodness_neg - self.threshold]))).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            if i % log_every == 0:
                print(f"step {i}: loss {loss.item():.4f}")
        return self.forward(x_pos).detach(), self.forward(x_neg).detach()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(1)
    x = torch.rand(args.samples, PIXELS)
    y = torch.randint(0, CLASSES, (args.samples,))
    wrong = (y + torch.randint(1, CLASSES, (args.samples,))) % CLASSES
    layers = [Layer(PIXELS, HIDDEN, args.lr, args.threshold, args.epochs),
              Layer(HIDDEN, HIDDEN, args.lr, args.threshold, args.epochs)]
    h_pos, h_neg = overlay_label(x, y), overlay_label(x, wrong)
    for index, layer in enumerate(layers):
        print(f"training layer {index}")
        h_pos, h_neg = layer.train_layer(h_pos, h_neg, log_every=5)
    print("done")


if __name__ == "__main__":
    main()
