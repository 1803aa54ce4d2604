"""Whole-process cost of `nandoctor run`: the plain script vs the same script under the guard.

What a user sees: `python train.py` against `nandoctor run train.py` (guard only: --stats-every 0,
and the default: per-layer statistics every 50 steps), each a fresh process, start-up, imports
and exit included. The script is an ordinary loop over bench_overhead.py's transformer (94
modules) or its 100-layer variant (1004 modules), logging its loss every step.

Runs alternate (plain, guard, stats, plain, ...) so a shared machine's load hits all variants
alike; the table gives medians and each variant's ratio to plain, and peak RSS (per child, from
wait4). `--busy N` starts N busy single-threaded processes beside the measurement. `paired` is
the median over rounds of each run's CPU time over the same round's plain run.

    python bench/bench_run.py                          # transformer, 300 steps, 5 rounds
    python bench/bench_run.py --model deep --steps 100 --busy 1
    python bench/bench_run.py --model blocks --steps 100 --variants guard   # 1002 small modules
    python bench/bench_run.py --model gpt2 --steps 5 --variants guard       # GPT-2 small's shape
    python bench/bench_run.py --model blocks --steps 100 --variants guard --baseline /work/main
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
ROOT = HERE.parent

SCRIPT = '''
import sys, torch
sys.path.insert(0, {bench!r})
from bench_overhead import build
torch.manual_seed(0)
model, make_batch = build({model!r})
x, y = make_batch()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
for step in range({steps}):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if step % 10 == 0:
        print(step, loss.item())
'''

VARIANTS = {
    "plain": [],
    "guard": ["-m", "nandoctor", "run", "--stats-every", "0", "-q"],
    "stats/50": ["-m", "nandoctor", "run", "--stats-every", "50", "-q"],
}


def timed(argv: list[str], cwd: str, root: Path = ROOT) -> tuple[float, float, float]:
    """(seconds, peak RSS in MiB, CPU seconds) of one child process, running `root`'s nandoctor."""
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(root)})
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def byte_compile(root: Path) -> None:
    """Byte-compile a tree's nandoctor, as `pip install` does. Without it, where
    PYTHONDONTWRITEBYTECODE is set (this machine sets it), every run compiles nandoctor's ~135
    modules from source again: ~0.2 s of CPU per process that an installed nandoctor never pays
    (torch and the plain script's other imports are byte-compiled already)."""
    import compileall
    compileall.compile_dir(str(root / "nandoctor"), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer", help="transformer | deep | blocks | gpt2 (bench_overhead.py's names)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--busy", type=int, default=0, help="busy single-threaded processes running beside")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which of plain, guard, stats/50 to time (plain always)")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. /work/main): its guard runs too, "
                        "in the same alternating rounds, as 'guard@base'")
    parser.add_argument("--no-byte-compile", action="store_true",
                        help="run nandoctor from source as it is (see byte_compile)")
    args = parser.parse_args()
    chosen = {name: (VARIANTS[name], ROOT) for name in VARIANTS if name == "plain" or name in args.variants}
    if args.baseline is not None:
        chosen["guard@base"] = (VARIANTS["guard"], args.baseline.resolve())
    if not args.no_byte_compile:
        for _, root in chosen.values():
            byte_compile(root)
    load_before = os.getloadavg()
    folder = tempfile.mkdtemp()
    script = Path(folder) / "train.py"
    script.write_text(SCRIPT.format(bench=str(HERE), model=args.model, steps=args.steps))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in chosen}
    try:
        timed([sys.executable, str(script)], folder)            # warm the file cache once
        for round_ in range(args.rounds):
            order = list(chosen.items())
            for name, (prefix, root) in (order if round_ % 2 == 0 else order[::-1]):
                results[name].append(timed([sys.executable, *prefix, str(script)], folder, root))
    finally:
        for process in busy:
            process.kill()
    plain = statistics.median(s for s, _, _ in results["plain"])
    plain_rss = statistics.median(r for _, r, _ in results["plain"])
    plain_cpu = statistics.median(c for _, _, c in results["plain"])
    load = os.getloadavg()
    print(f"# {args.model}, {args.steps} steps, {args.rounds} alternating rounds, busy={args.busy}, "
          f"load {load_before[0]:.1f} -> {load[0]:.1f}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"nandoctor {'from source' if args.no_byte_compile else 'byte-compiled'}")
    # CPU time (user + system of the child) is the figure to compare on a shared machine: wall time
    # there also counts the time other jobs held the cores.
    # paired: the median of each round's CPU ratio to that round's plain run, which sat next to it
    # in time (a machine whose speed drifts over minutes moves both runs of a round alike).
    print(f"{'variant':10s} {'median s':>9s} {'ratio':>6s} {'CPU s':>7s} {'ratio':>6s} {'paired':>6s} "
          f"{'all runs (wall s)':32s} {'peak RSS MiB':>12s} {'RSS ratio':>9s}")
    for name, runs in results.items():
        median = statistics.median(s for s, _, _ in runs)
        rss = statistics.median(r for _, r, _ in runs)
        cpu = statistics.median(c for _, _, c in runs)
        paired = statistics.median(c / p for (_, _, c), (_, _, p) in zip(runs, results["plain"]))
        print(f"{name:10s} {median:9.2f} {median / plain:6.3f} {cpu:7.2f} {cpu / plain_cpu:6.3f} {paired:6.3f} "
              f"{' '.join(f'{s:.2f}' for s, _, _ in runs):32s} {rss:12.0f} {rss / plain_rss:9.3f}")


if __name__ == "__main__":
    main()
