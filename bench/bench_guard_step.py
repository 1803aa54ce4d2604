"""The guard's own per-step cost against a baseline checkout's: one process, taking turns.

A plain loop, the baseline's `nandoctor.watch` (guard only: stats_every=0) and this checkout's,
each on its own copy of a bench_overhead.py model, step by step in rotating order so a shared
machine's load hits all three alike; the median CPU time (time.process_time) of each. The
baseline's package is copied under another name so both import in one process.

    python bench/bench_guard_step.py --baseline /work/main --models mlp blocks transformer --steps 100
    python bench/bench_guard_step.py --baseline /work/main --models blocks --steps 41 --early-every 4

--early-every N samples early warnings every N steps (default: the watch's own, every 50) and adds
what a sampled step costs over an unsampled one (median of each) for both checkouts.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench_overhead import build  # noqa: E402
from bench_watch import one_step  # noqa: E402


def baseline_package(root: Path) -> object:
    folder = Path(tempfile.mkdtemp())
    shutil.copytree(root / "nandoctor", folder / "nandoctor_baseline")
    sys.path.insert(0, str(folder))
    import nandoctor_baseline
    return nandoctor_baseline


def loop(name: str, package: object = None, stats_every: int = 0, early_every: int = 0):
    model, make_batch = build(name)
    x, y = make_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    early = {"early_warnings": {"every": early_every}} if early_every else {}
    watch = package.watch(model, opt, out=tempfile.mkdtemp(), stats_every=stats_every, **early) if package else None

    def step() -> None:
        one_step(model, opt, watch, x, y)      # the same loop body as bench_watch.py's
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (e.g. /work/main)")
    parser.add_argument("--models", nargs="+", default=["mlp", "blocks", "transformer"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--early-every", type=int, default=0, help="early-warning sampling period (0: the default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import nandoctor
    base = baseline_package(args.baseline.resolve())
    print(f"# torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads}, load {os.getloadavg()[0]:.1f}; "
          f"median CPU ms of {args.steps} steps after 2 warm-up steps, guard only (stats_every=0)")
    print(f"{'model':12s} {'plain ms':>9s} {'baseline':>9s} {'ratio':>6s} {'this':>9s} {'ratio':>6s}  load")
    for name in args.models:
        every = args.early_every
        steps = {"plain": loop(name), "baseline": loop(name, base, early_every=every),
                 "this": loop(name, nandoctor, early_every=every)}
        for _ in range(2):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {k: [] for k in steps}
        order = list(steps)
        for i in range(args.steps):
            turn = order[i % 3:] + order[:i % 3]
            for key in (turn if i % 2 == 0 else turn[::-1]):
                t0 = time.process_time()
                steps[key]()
                times[key].append(time.process_time() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        line = (f"{name:12s} {med['plain']:9.2f} {med['baseline']:9.2f} {med['baseline'] / med['plain']:6.3f} "
                f"{med['this']:9.2f} {med['this'] / med['plain']:6.3f}  {os.getloadavg()[0]:.1f}")
        if every:
            # step i of the loop is the watch's step 2 + i (after the two warm-up steps)
            for key in ("baseline", "this"):
                sampled = [t for i, t in enumerate(times[key]) if (2 + i) % every == 0]
                other = [t for i, t in enumerate(times[key]) if (2 + i) % every]
                med[key] = (statistics.median(sampled) - statistics.median(other)) * 1e3 if sampled and other else math.nan
            line += f"  sampled step adds: baseline {med['baseline']:.1f} ms, this {med['this']:.1f} ms"
        print(line, flush=True)


if __name__ == "__main__":
    main()
