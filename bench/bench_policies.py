"""Cost of the policies that keep a run alive (watcher/policies.py): what a rolling copy costs,
what the copies hold, and what a guarded loop pays per step for `on_nonfinite="rollback"`.

- copy: one `take_copy` of weights + buffers + AdamW state (+ scheduler), to the CPU and to disk,
  median of a few, for models of growing size; the footprint is `keep` copies.
- restore: one `put_back` of such a copy (what a rollback costs, once).
- loop: a small MLP trained for N steps with the plain watch (on_nonfinite="raise"), and with
  rollback copies every K steps, taking turns step by step (a shared machine's load hits both);
  the median step of each.

    python bench/bench_policies.py                       # writes nothing; paste into policies_results.txt
    python bench/bench_policies.py --sizes 1 16 --steps 200
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nandoctor  # noqa: E402
from nandoctor.watcher.policies import put_back, take_copy  # noqa: E402


def model_of(mib: float) -> nn.Module:
    """An MLP of about `mib` MiB of float32 weights, in layers of 1024 x 1024."""
    layers = max(1, round(mib * 2**20 / 4 / (1024 * 1024)))
    return nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(layers)])


def copy_costs(mib: float, repeats: int) -> dict[str, float]:
    model = model_of(mib)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1024)).sum().backward()
    opt.step()                        # AdamW state exists: weights + 2 moments
    watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp(), on_nonfinite="rollback")
    cpu, disk, restore = [], [], []
    folder = Path(tempfile.mkdtemp())
    copy = None
    for _ in range(repeats):
        began = time.perf_counter()
        copy = take_copy(0, watch)
        cpu.append(time.perf_counter() - began)
        began = time.perf_counter()
        on_disk = take_copy(0, watch, folder)
        disk.append(time.perf_counter() - began)
        on_disk.drop()
        began = time.perf_counter()
        put_back(copy, watch)
        restore.append(time.perf_counter() - began)
    watch.close()
    state_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {"weights_mib": state_mib, "copy_mib": copy.nbytes / 2**20, "cpu_s": statistics.median(cpu),
            "disk_s": statistics.median(disk), "restore_s": statistics.median(restore)}


def loop_costs(steps: int, every: int) -> dict[str, float]:
    torch.manual_seed(0)
    variants = {}
    for name in ("raise", "rollback"):
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        options = {"on_nonfinite": name} if name == "raise" else {"on_nonfinite": "rollback",
                                                                   "rollback": {"every": every, "keep": 2}}
        variants[name] = (model, opt, nandoctor.watch(model, opt, out=tempfile.mkdtemp(), **options), [])
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    for step in range(steps):
        # Taking turns, in alternating order: neither variant always runs on a warm cache.
        order = list(variants.values()) if step % 2 else list(variants.values())[::-1]
        for model, opt, watch, times in order:
            began = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - began)
    result = {}
    for name, (_, _, watch, times) in variants.items():
        result[name] = statistics.median(times) * 1e3
        result[name + "_mean"] = statistics.mean(times) * 1e3
        if name == "rollback":
            result["copies"] = len(watch.keep_alive.keeper.copy_seconds)
            result["copy_ms"] = statistics.median(watch.keep_alive.keeper.copy_seconds) * 1e3
            result["footprint_kib"] = watch.keep_alive.keeper.footprint / 2**10
        watch.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=float, nargs="+", default=[4, 64, 256], help="weights, MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}")
    print("weights MiB  copy MiB (keep=1)  to CPU s  to disk s  restore s   (AdamW: weights + 2 moments)")
    for mib in args.sizes:
        c = copy_costs(mib, args.repeats)
        print(f"{c['weights_mib']:11.0f}  {c['copy_mib']:16.0f}  {c['cpu_s']:8.3f}  {c['disk_s']:9.3f}  {c['restore_s']:9.3f}")
    loop = loop_costs(args.steps, args.every)
    print(f"loop: MLP 0.8M params, {args.steps} steps, batch 64; median step ms: watch(raise) {loop['raise']:.3f}, "
          f"watch(rollback every {args.every}) {loop['rollback']:.3f} (ratio {loop['rollback'] / loop['raise']:.3f}); "
          f"mean step ms {loop['raise_mean']:.3f} / {loop['rollback_mean']:.3f} (ratio "
          f"{loop['rollback_mean'] / loop['raise_mean']:.3f}); {loop['copies']} copies of {loop['copy_ms']:.2f} ms; "
          f"footprint {loop['footprint_kib']:.0f} KiB (keep=2)")


if __name__ == "__main__":
    main()
