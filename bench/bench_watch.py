"""Cost of `nandoctor.watch` in a user's loop: plain vs guard only vs guard + stats every 50 steps.

The models are bench_overhead.py's transformer (94 modules) and 100-layer transformer (1004 modules).

Time: the three variants run in one process, taking turns step by step, so the load of a shared
machine hits them alike; the median step of each. "stats/50" is the guard plus one statistics
step's extra cost (measured with statistics on every step) spread over 50 steps.
Memory: each variant in its own process (peak RSS is its own), and the RSS growth from the
start to the end of the run (it must stay flat in steps).

    python bench/bench_watch.py                     # both models
    python bench/bench_watch.py --models transformer --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_overhead import build  # noqa: E402  (the same models as the recording benchmark)

VARIANTS = ("plain", "guard", "stats")
STATS_EVERY = 50


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make(name: str, variant: str):
    """A fresh model, optimizer and (for the watched variants) watch; same seed for all."""
    model, batch = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    watch = None
    if variant != "plain":
        import nandoctor
        every = {"guard": 0, "stats": STATS_EVERY, "stats-every-step": 1}[variant]
        watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp(), stats_every=every)
    return model, batch, opt, watch


def one_step(model, opt, watch, x, y) -> float:
    t0 = time.perf_counter()
    if watch is None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()            # a real loop logs its loss: one sync per step, as the watch's
    else:
        with watch.step((x, y)):
            loss = watch.loss(nn.functional.cross_entropy(model(x), y))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def timing(name: str, steps: int) -> dict:
    """All variants in one process, one step each in turn: load drift on a shared machine hits
    every variant alike. Statistics every step measure what one statistics step costs."""
    variants = ("plain", "guard", "stats-every-step")
    runs = {v: make(name, v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for step in range(steps + 3):
        torch.manual_seed(step)
        x, y = runs["plain"][1]()
        for v in (variants if step % 2 else variants[::-1]):
            model, _, opt, watch = runs[v]
            t = one_step(model, opt, watch, x, y)
            if step >= 3:
                times[v].append(t)
    med = {v: 1000 * statistics.median(t) for v, t in times.items()}
    stats_extra = med["stats-every-step"] - med["guard"]
    return {"modules": sum(1 for _ in runs["plain"][0].modules()), "plain_ms": med["plain"],
            "guard_ms": med["guard"], "stats_step_ms": med["stats-every-step"],
            "stats50_ms": med["guard"] + stats_extra / STATS_EVERY}


def memory(name: str, variant: str, steps: int) -> dict:
    model, batch, opt, watch = make(name, variant)
    if watch is not None and variant == "stats":
        watch.stats_every = 5          # several statistics steps within a short run
    rss = []
    for step in range(steps):
        torch.manual_seed(step)
        x, y = batch()
        one_step(model, opt, watch, x, y)
        rss.append(rss_mb())
    tenth = max(1, steps // 5)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_growth_mb": statistics.mean(rss[-tenth:]) - statistics.mean(rss[3:3 + tenth])}


def isolated(name: str, rounds: int) -> dict:
    """The watch's own work per step, timed apart from the model's compute (robust on a loaded
    machine): optimizer.step() with and without the watch's hooks around it, and a forward with
    and without the statistics hooks. Ratios use a full plain step timed in the same process."""
    model, batch = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x, y = batch()
    full = []
    for _ in range(4):
        full.append(one_step(model, opt, None, x, y))
        nn.functional.cross_entropy(model(x), y).backward()     # gradients stay for the timings below
    import nandoctor
    watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp(), stats_every=0)
    watch.close()                                               # hooks added and removed per timing below
    loss = torch.tensor(1.0)
    plain_opt, guard_opt, fwd, fwd_stats = [], [], [], []
    for r in range(rounds + 2):
        if r == 2:              # the first rounds warm caches and lazy imports
            plain_opt, guard_opt, fwd, fwd_stats = [], [], [], []
        t0 = time.perf_counter()
        opt.step()
        plain_opt.append(time.perf_counter() - t0)
        watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp(), stats_every=0)
        t0 = time.perf_counter()
        with watch.step((x, y)):
            watch.loss(loss)
            opt.step()
        guard_opt.append(time.perf_counter() - t0)
        watch.close()
        with torch.no_grad():
            t0 = time.perf_counter()
            model(x)
            fwd.append(time.perf_counter() - t0)
            watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp(), stats_every=1)
            t0 = time.perf_counter()
            with watch.step((x, y)):
                model(x)
                watch.check_gradients()                          # the statistics step's bigger transfer
            fwd_stats.append(time.perf_counter() - t0)
            watch.close()
    med = lambda v: 1000 * statistics.median(v)   # noqa: E731
    guard = med(guard_opt) - med(plain_opt)
    stats_step = med(fwd_stats) - med(fwd)
    return {"modules": sum(1 for _ in model.modules()), "plain_ms": med(full[1:]), "guard_ms": guard,
            "stats_step_ms": stats_step}


def bundle_write(gb: float) -> None:
    """Write the crash bundle of a `gb` GiB float32 model trained by AdamW (weights + 2 moments)."""
    import nandoctor
    width = 8192
    layers = max(1, round(gb * 2**30 / (4 * width * width)))
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    x = torch.randn(4, width)
    out = tempfile.mkdtemp()
    watch = nandoctor.watch(model, opt, out=out, stats_every=0)
    with watch.step(x):                                         # one healthy step creates Adam's state
        watch.loss(model(x).square().mean()).backward()
        opt.step()
        opt.zero_grad()
    bad = x.clone()
    bad[0, 0] = float("nan")
    t0 = time.perf_counter()
    try:
        with watch.step(bad):
            watch.loss(model(bad).square().mean()).backward()
            opt.step()
    except nandoctor.NonFiniteError as err:
        took = time.perf_counter() - t0
        manifest = json.loads((err.bundle / "manifest.json").read_text())
        params = sum(p.numel() for p in model.parameters())
        print(f"model {params * 4 / 2**30:.2f} GiB float32 ({params / 1e6:.0f}M parameters) + AdamW state: bundle "
              f"{manifest['size_bytes'] / 2**30:.2f} GiB written in {manifest['write_seconds']:.2f} s "
              f"(whole failing step, forward and backward included: {took:.2f} s)")
        import shutil
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["transformer", "deep"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--memory-steps", type=int, default=30)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "MODEL", "VARIANT"))
    parser.add_argument("--bundle-gb", type=float, help="only time writing the bundle of a model this large")
    parser.add_argument("--isolated", action="store_true", help="only the watch's own cost per step, timed apart")
    args = parser.parse_args()
    if args.bundle_gb:
        bundle_write(args.bundle_gb)
        return
    if args.isolated:
        print(f"{'model':12s} {'modules':>7s} {'plain step ms':>13s} {'guard ms':>9s} {'ratio':>6s} {'stats step ms':>13s}"
              f" {'ratio, stats/50':>15s}")
        for name in args.models:
            r = isolated(name, args.steps)
            p = r["plain_ms"]
            print(f"{name:12s} {r['modules']:7d} {p:13.1f} {r['guard_ms']:9.2f} {1 + r['guard_ms'] / p:6.3f}"
                  f" {r['stats_step_ms']:13.2f} {1 + (r['guard_ms'] + r['stats_step_ms'] / STATS_EVERY) / p:15.3f}")
        return
    if args.child:
        kind, name, variant = args.child
        out = timing(name, args.steps) if kind == "time" else memory(name, variant, args.memory_steps)
        print(json.dumps(out))
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}; median of "
          f"{args.steps} interleaved steps; memory over {args.memory_steps} steps (statistics every 5)")
    print(f"{'model':12s} {'modules':>7s} {'plain ms':>9s} {'guard':>8s} {'ratio':>6s} {'stats/50':>9s} {'ratio':>6s}"
          f" {'1 stats step':>12s} {'RSS plain':>10s} {'guard':>6s} {'stats':>6s} {'growth MB p/g/s':>16s}")
    for name in args.models:
        def run(*child: str) -> dict:
            out = subprocess.run([sys.executable, __file__, "--child", *child, "--steps", str(args.steps),
                                  "--memory-steps", str(args.memory_steps)], capture_output=True, text=True, check=True)
            return json.loads(out.stdout.strip().splitlines()[-1])
        t = run("time", name, "all")
        mem = {v: run("memory", name, v) for v in VARIANTS}
        p, g, s = mem["plain"], mem["guard"], mem["stats"]
        print(f"{name:12s} {t['modules']:7d} {t['plain_ms']:9.1f} {t['guard_ms']:8.1f} {t['guard_ms'] / t['plain_ms']:6.3f}"
              f" {t['stats50_ms']:9.1f} {t['stats50_ms'] / t['plain_ms']:6.3f} {t['stats_step_ms'] / t['plain_ms']:11.2f}x"
              f" {p['peak_rss_mb']:10.0f} {g['peak_rss_mb'] / p['peak_rss_mb']:6.3f} {s['peak_rss_mb'] / p['peak_rss_mb']:6.3f}"
              f" {p['rss_growth_mb']:5.1f}/{g['rss_growth_mb']:.1f}/{s['rss_growth_mb']:.1f}")


if __name__ == "__main__":
    main()
