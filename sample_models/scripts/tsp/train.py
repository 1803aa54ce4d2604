"""Mirrors pytorch/examples time_sequence_prediction/train.py (commit 77f55b9): two stacked
LSTMCells unrolled by hand over a sine wave in float64, MSELoss, and torch.optim.LBFGS whose
step(closure) calls zero_grad/forward/backward several times inside one optimizer step, then a
no_grad prediction of the future. The waves come from a CSV file instead of traindata.pt.

Injected bug (in expected.yaml): `--data data/traindata_gap.csv`, where one sample of wave 6 is
NaN (a gap in the recording). It is an input and a target, so the loss is NaN from the first
closure call of the first step.
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim


class Sequence(nn.Module):
    """Two LSTMCells and a linear read-out, unrolled by hand; `future` extra steps feed the
    prediction back in as the next input."""

    def __init__(self, hidden=16):
        super().__init__()
        self.hidden = hidden
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)

    def step(self, x, states):
        (h1, c1), (h2, c2) = states
        h1, c1 = self.lstm1(x, (h1, c1))
        h2, c2 = self.lstm2(h1, (h2, c2))
        return self.linear(h2), ((h1, c1), (h2, c2))

    def forward(self, signal, future=0):
        zeros = lambda: torch.zeros(signal.size(0), self.hidden, dtype=torch.double)
        states = ((zeros(), zeros()), (zeros(), zeros()))
        predictions = []
        for column in signal.split(1, dim=1):
            y, states = self.step(column, states)
            predictions.append(y)
        for _ in range(future):
            y, states = self.step(y, states)
            predictions.append(y)
        return torch.cat(predictions, dim=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2, help="LBFGS steps")
    parser.add_argument("--data", type=str, default="data/traindata.csv")
    args = parser.parse_args()
    np.random.seed(0)
    torch.manual_seed(0)
    waves = torch.from_numpy(np.loadtxt(args.data, delimiter=","))
    # waves 0-2 are held out; each wave predicts its own next sample
    train_x, train_y = waves[3:, :-1], waves[3:, 1:]
    held_x, held_y = waves[:3, :-1], waves[:3, 1:]
    net = Sequence().double()
    mse = nn.MSELoss()
    lbfgs = optim.LBFGS(net.parameters(), lr=0.8, max_iter=5)

    def closure():
        # LBFGS re-evaluates the loss several times per step: forward and backward happen in here
        lbfgs.zero_grad()
        loss = mse(net(train_x), train_y)
        print("loss:", loss.item())
        loss.backward()
        return loss

    for step in range(args.steps):
        print("STEP: ", step)
        lbfgs.step(closure)
        with torch.no_grad():
            horizon = 20
            forecast = net(held_x, future=horizon)
            print("test loss:", mse(forecast[:, :-horizon], held_y).item())


if __name__ == "__main__":
    main()
