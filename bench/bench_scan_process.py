"""Whole-process cost: `nandoctor scan` vs a plain Python training loop doing the same steps.

Both are fresh processes timed from the outside (wall clock, the child's CPU time and its peak
RSS from wait4), so the comparison includes interpreter start, imports (torch, the CLI), building
the model, the steps and writing the report. The scan runs `--steps N -p 32-true --no-experiments
-f json`. Runs alternate between the variants and the medians are reported, with the machine's
load average before and after; `--busy N` starts N busy single-threaded processes beside the
measurement (a shared CI machine).

    python bench/bench_scan_process.py --model blocks --steps 10 --repeats 5   # 1002 small modules
    python bench/bench_scan_process.py --model transformer --steps 10 --busy 1
    python bench/bench_scan_process.py --model gpt2 --steps 3                  # GPT-2 small's shape
    python bench/bench_scan_process.py --baseline-tree /tmp/old  # also time another checkout's scan
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The model file is a bench_overhead.py model, written out in the model-file contract.
MODEL_FILE = '''
import sys
import torch
from torch import nn
sys.path.insert(0, {bench!r})
from bench_overhead import build

NAME = {name!r}
_, _make_batch = build(NAME)


def build_model():
    return build(NAME)[0]


def get_batch(step):
    return _make_batch()


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


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of one child process."""
    began = time.perf_counter()
    # cwd: `python -m nandoctor` imports the package from the working directory before
    # PYTHONPATH, so each tree's scan runs from its own checkout.
    child = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):      # 1: the scan's findings gate, still a full scan
        raise SystemExit(f"{command[:4]} exited {code}:\n{child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="blocks", choices=["mlp", "transformer", "deep", "deep-tiny", "blocks", "gpt2"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="busy single-threaded processes running beside")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another checkout of nandoctor whose scan is timed beside this one")
    args = parser.parse_args()
    here = HERE.parent
    load_before = os.getloadavg()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / "bench_model.py"
            model_path.write_text(MODEL_FILE.format(name=args.model, bench=str(HERE)))
            loop_path = Path(tmp) / "plain_loop.py"
            loop_path.write_text(PLAIN_LOOP)
            scan_args = ["-m", "nandoctor", "scan", str(model_path), "--steps", str(args.steps), "-p", "32-true",
                         "--no-experiments", "-f", "json", "-o", str(Path(tmp) / "report.json"), "--quiet",
                         "--fail-on", "never"]
            variants = {"plain": ([sys.executable, str(loop_path), str(model_path), str(args.steps)], here)}
            variants["nandoctor"] = ([sys.executable, *scan_args], here)
            if args.baseline_tree is not None:
                variants["baseline"] = ([sys.executable, *scan_args], args.baseline_tree.resolve())
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (command, tree) in variants.items():
                    env = dict(os.environ, PYTHONPATH=str(tree))
                    results[name].append(timed(command, env, tree))
    finally:
        for process in busy:
            process.kill()
    load_after = os.getloadavg()
    wall = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    rss = {name: statistics.median(r[2] for r in runs) for name, runs in results.items()}
    print(f"# model {args.model}, {args.steps} steps, 32-true, --no-experiments, median of {args.repeats} alternating "
          f"runs, busy={args.busy}, load {load_before[0]:.1f} -> {load_after[0]:.1f}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'variant':10s} {'wall s':>8s} {'ratio':>6s} {'cpu s':>8s} {'ratio':>6s} {'RSS MiB':>8s} {'ratio':>6s}   runs (wall)")
    for name in variants:
        print(f"{name:10s} {wall[name]:8.2f} {wall[name] / wall['plain']:6.2f} {cpu[name]:8.2f}"
              f" {cpu[name] / cpu['plain']:6.2f} {rss[name]:8.0f} {rss[name] / rss['plain']:6.2f}"
              f"   {' '.join(f'{r[0]:.2f}' for r in results[name])}")


if __name__ == "__main__":
    main()
