"""A training loop that compiles its model (tests/test_compile.py). It counts what the compiler
did with its own CompileCounter backend and prints it last, so the same script run with plain
`python` and under `nandoctor run` can be compared: nandoctor must add no graph and no break.
`--nan-at K` makes step K's forward take the log of a negative number; `--whole-step` compiles
the whole train step (forward, backward, optimizer step) instead of the model; `--in-place`
compiles the model with `model.compile()` (no wrapper)."""
import argparse

import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--nan-at", type=int, default=-1)
parser.add_argument("--whole-step", action="store_true")
parser.add_argument("--in-place", action="store_true")
args = parser.parse_args()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x, shift):
        h = self.body(x)
        return self.head(torch.log(h + shift))


torch.manual_seed(0)
net = Net()
backend = CompileCounter()
if args.in_place:
    net.compile(backend=backend)
model = net if args.whole_step or args.in_place else torch.compile(net, backend=backend)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(16, 4), torch.randn(16, 1)


def train_step(x, y, shift):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x, shift), y)
    loss.backward()
    optimizer.step()
    return loss


if args.whole_step:
    train_step = torch.compile(train_step, backend=backend)
for step in range(args.steps):
    train_step(x, y, torch.tensor(-2.0 if step == args.nan_at else 2.0))
print(f"COMPILED graphs={backend.frame_count} breaks={sum(counters['graph_break'].values())}", flush=True)
