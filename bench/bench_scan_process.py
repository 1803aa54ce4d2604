"""Whole-process cost: `nandoctor scan` vs a plain Python training loop doing the same steps.

Both are fresh processes timed from the outside (wall clock and the child's CPU time), so the
comparison includes interpreter start, imports (torch, the CLI), building the model, the steps
and writing the report. The scan runs `--steps N -p 32-true --no-experiments -f json`. Runs
alternate between the variants and the medians are reported; CPU time is the steadier number on
a machine shared with other work.

    python bench/bench_scan_process.py                          # 1004-module transformer, 10 steps, 3 runs
    python bench/bench_scan_process.py --model mlp --repeats 5
    python bench/bench_scan_process.py --baseline-tree /tmp/old  # also time another checkout's scan
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The model file is the bench_overhead model, written out in the model-file contract.
MODEL_FILE = '''
import torch
from torch import nn

NAME = {name!r}


class Pool(nn.Module):
    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def build_model():
    if NAME == "mlp":
        return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    width, ffn, layers = {{"transformer": (256, 1024, 9), "deep": (128, 256, 100), "deep-tiny": (64, 128, 100)}}[NAME]
    layer = nn.TransformerEncoderLayer(width, 4 if width < 256 else 8, ffn, batch_first=True)
    return Pool(nn.TransformerEncoder(layer, layers, enable_nested_tensor=False), nn.Linear(width, 10))


def get_batch(step):
    if NAME == "mlp":
        return torch.randn(256, 256), torch.randint(0, 10, (256,))
    shape = {{"transformer": (16, 128, 256), "deep": (8, 128, 128), "deep-tiny": (8, 64, 64)}}[NAME]
    return torch.randn(*shape), torch.randint(0, 10, (shape[0],))


def loss_fn(outputs, targets):
    return nn.functional.cross_entropy(outputs, targets)
'''

# What a user's own loop does with the same file: seed, build, AdamW(lr=1e-3), log the loss.
PLAIN_LOOP = '''
import importlib.util, sys
import torch
spec = importlib.util.spec_from_file_location("model", sys.argv[1])
model_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model_file)
torch.manual_seed(0)
model = model_file.build_model()
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
for step in range(int(sys.argv[2])):
    torch.manual_seed(step)
    inputs, targets = model_file.get_batch(step)
    optimizer.zero_grad(set_to_none=True)
    loss = model_file.loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    print(step, loss.item())
'''


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):      # 1: the scan's findings gate, still a full scan
        raise SystemExit(f"{command[:4]} exited {done.returncode}:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep", choices=["mlp", "transformer", "deep", "deep-tiny"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another checkout of nandoctor whose scan is timed beside this one")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "bench_model.py"
        model_path.write_text(MODEL_FILE.format(name=args.model))
        loop_path = Path(tmp) / "plain_loop.py"
        loop_path.write_text(PLAIN_LOOP)
        scan_args = ["-m", "nandoctor", "scan", str(model_path), "--steps", str(args.steps), "-p", "32-true",
                     "--no-experiments", "-f", "json", "-o", str(Path(tmp) / "report.json"), "--quiet",
                     "--fail-on", "never"]
        variants = {"plain": ([sys.executable, str(loop_path), str(model_path), str(args.steps)], here)}
        variants["nandoctor"] = ([sys.executable, *scan_args], here)
        if args.baseline_tree is not None:
            variants["baseline"] = ([sys.executable, *scan_args], args.baseline_tree.resolve())
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (command, tree) in variants.items():
                env = dict(os.environ, PYTHONPATH=str(tree))
                results[name].append(timed(command, env))
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in results.items()}
    print(f"model {args.model}, {args.steps} steps, 32-true, --no-experiments, median of {args.repeats} runs, "
          f"{os.cpu_count()} CPUs")
    print(f"{'variant':10s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s}   runs (wall)")
    for name in variants:
        print(f"{name:10s} {wall[name]:8.2f} {wall[name] / wall['plain']:6.2f} {cpu[name]:8.2f}"
              f" {cpu[name] / cpu['plain']:6.2f}   {' '.join(f'{w:.2f}' for w, _ in results[name])}")


if __name__ == "__main__":
    main()
