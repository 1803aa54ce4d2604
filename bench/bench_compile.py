"""Cost of `nandoctor.watch` under torch.compile: a compiled model (`watch(torch.compile(model))`)
and a compiled whole train step (`torch.compile(train_step)` inside `with watch.step(...)`),
against the same loop without the watch. Goal: <= 1.05x.

In-step: the plain and the watched loop run in one process, each with its own model and compiled
code, taking turns step by step; the median step of each after warm-up (compilation), in CPU
time of this process (single-threaded: OMP_NUM_THREADS=1), which the load of a shared machine
distorts far less than wall time. Two models of the same code differ by up to ~0.8% in one
process (where their memory landed): with `--rounds R` each row is measured in R fresh
processes, the variant built first alternating, and the median of their ratios is reported with
its range. `--control` adds a row of two plain loops measured the same way (the noise floor). Whole-process: each variant alone in a fresh process, from
`python` start to its last step (imports, compilation and all steps), CPU time of the child, run
twice in the order plain, watched, watched, plain (the compiler's on-disk cache warms alike). The compiler's graph and
graph-break counts of both variants are printed too: they must be equal.

    python bench/bench_compile.py                                   # everything (slow: inductor)
    python bench/bench_compile.py --backends aot_eager --models mlp --steps 30
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

SETTINGS = ("model", "step")


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm(x))


def build(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        x, y = torch.randn(256, 256), torch.randint(0, 10, (256,))
        return model, x, y
    if name == "transformer":
        model = nn.Sequential(Block(128), Block(128), nn.Flatten(), nn.Linear(128 * 32, 10))
        x, y = torch.randn(32, 32, 128), torch.randint(0, 10, (32,))
        return model, x, y
    raise SystemExit(f"unknown model {name}")


def make(name: str, setting: str, backend: str, watched: bool):
    """A loop step (a callable taking no argument) for one variant, and its counting backend."""
    import torch._dynamo
    model, x, y = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if setting == "model":
        compiled = torch.compile(model, backend=backend)
        watch = None
        if watched:
            import nandoctor
            watch = nandoctor.watch(compiled, opt, out=tempfile.mkdtemp())

        def step():
            loss = nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()            # a real loop logs its loss: one sync per step, as the watch's
        return step, watch

    @torch.compile(backend=backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if not watched:
        return (lambda: train_step(x, y).item()), None
    import nandoctor
    watch = nandoctor.watch(model, opt, out=tempfile.mkdtemp())

    def watched_step():
        with watch.step((x, y)):
            watch.loss(train_step(x, y))
    return watched_step, watch


def in_step(name: str, setting: str, backend: str, steps: int, warmup: int, watched_first: bool = False,
            control: bool = False) -> dict:
    """control: the second loop is plain too (an A/A row: what two models of the same code differ by)."""
    loops = {}
    for watched in ((True, False) if watched_first else (False, True)):
        step, watch = make(name, setting, backend, watched and not control)
        for _ in range(warmup):
            step()
        loops[watched] = (step, watch)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(steps):
        for watched in ((False, True) if i % 2 == 0 else (True, False)):
            t0 = time.process_time()
            loops[watched][0]()
            times[watched].append(time.process_time() - t0)
    plain, guarded = statistics.median(times[False]), statistics.median(times[True])
    watch = loops[True][1]
    assert control or (watch is not None and watch.step_index == warmup + steps), (watch, warmup + steps)
    return {"plain_ms": plain * 1e3, "watch_ms": guarded * 1e3, "ratio": guarded / plain}


def in_step_rounds(name: str, setting: str, backend: str, steps: int, warmup: int, rounds: int,
                   control: bool = False) -> dict:
    """`in_step` in `rounds` fresh processes (the variant built first alternating): the median ratio
    and its range. One round runs in this process, as before."""
    if rounds <= 1:
        row = in_step(name, setting, backend, steps, warmup, control=control)
        return {**row, "low": row["ratio"], "high": row["ratio"]}
    rows = []
    for r in range(rounds):
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        command = [sys.executable, os.path.abspath(__file__), "--in-step", name, setting, backend, str(steps),
                   str(warmup), "1" if r % 2 else "0", "1" if control else "0"]
        done = subprocess.run(command, check=True, env=env, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ratios = sorted(row["ratio"] for row in rows)
    return {"plain_ms": statistics.median(row["plain_ms"] for row in rows),
            "watch_ms": statistics.median(row["watch_ms"] for row in rows),
            "ratio": statistics.median(ratios), "low": ratios[0], "high": ratios[-1]}


def whole_process(name: str, setting: str, backend: str, steps: int) -> dict:
    """Each variant in a fresh process (same command line, --child), wall time start to end, and
    the compiler's counts there (graphs compiled, graph breaks): a fresh process compiles from scratch."""
    out, counts = {False: 0.0, True: 0.0}, {}
    for watched in (False, True, True, False):
        env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        command = [sys.executable, os.path.abspath(__file__), "--child", name, setting, backend, str(steps),
                   "1" if watched else "0"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, check=True, env=env, stdout=subprocess.PIPE, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out[watched] += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        counts[watched] = done.stdout.strip().splitlines()[-1]
    return {"plain_s": out[False], "watch_s": out[True], "ratio": out[True] / out[False],
            "counts": f"{counts[False]} {counts[True]}"}


def child(name: str, setting: str, backend: str, steps: int, watched: bool) -> None:
    from torch._dynamo.utils import counters
    step, _ = make(name, setting, backend, watched)
    for _ in range(steps):
        step()
    print(f"{counters['stats']['unique_graphs']}/{sum(counters['graph_break'].values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "transformer"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--backends", nargs="+", default=["aot_eager", "inductor"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--process-steps", type=int, default=40, help="steps of each whole-process run (0: skip)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each in-step row in this many fresh processes (median ratio and range)")
    parser.add_argument("--control", action="store_true", help="add an A/A row per model: plain against plain")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--in-step", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_step:
        name, setting, backend, steps, warmup, watched_first, control = args.in_step
        print(json.dumps(in_step(name, setting, backend, int(steps), int(warmup), watched_first == "1",
                                 control == "1")))
        return
    if args.child:
        name, setting, backend, steps, watched = args.child
        child(name, setting, backend, int(steps), watched == "1")
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, "
          f"load average at start {os.getloadavg()[0]:.1f}; median of {args.steps} interleaved steps after "
          f"{args.warmup} warm-up steps, in {args.rounds} process(es); whole process: {args.process_steps} steps")
    print(f"{'model':12} {'setting':8} {'backend':10} {'plain ms':>9} {'watch ms':>9} {'ratio':>6} {'range':>11}  "
          f"{'process CPU s p/w':>17} {'ratio':>6}  graphs/breaks p w  load")
    for name in args.models:
        for setting in args.settings:
            for backend in args.backends:
                rows = [(setting, False)] + ([(f"{setting}-AA", True)] if args.control else [])
                for label, control in rows:
                    row = in_step_rounds(name, setting, backend, args.steps, args.warmup, args.rounds, control)
                    whole = (whole_process(name, setting, backend, args.process_steps)
                             if args.process_steps and not control else None)
                    proc = (f"{whole['plain_s']:8.1f}/{whole['watch_s']:<8.1f} {whole['ratio']:6.3f}  {whole['counts']:17}"
                            if whole else f"{'-':>17} {'-':>6}  {'-':17}")
                    spread = f"{row['low']:.3f}-{row['high']:.3f}"
                    print(f"{name:12} {label:8} {backend:10} {row['plain_ms']:9.2f} {row['watch_ms']:9.2f} "
                          f"{row['ratio']:6.3f} {spread:>11}  {proc}  {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
