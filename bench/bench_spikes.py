"""Whole-process cost of spike detection and sampled early warnings under `nandoctor run`.

The script is tests/scripts/tiny_transformer_high_lr.py at a healthy lr (1e-3): a 2-block causal
Transformer whose hand-written attention's scores are measured through softmax on sampled steps
(`--model transformer`: bench_run.py's loop over bench_overhead.py's 94-module transformer, whose
nn.MultiheadAttention logits are measured; ~100x the step time).
Variants, each a fresh process (start-up, imports and exit included):

    plain          python train.py
    guard          nandoctor run, spikes and early warnings off (config), --stats-every 0
    +spikes        the same with spike detection (the default)
    +early/50      spikes and early warnings sampled every 50 steps (the defaults)

Runs alternate so a shared machine's load hits all variants alike; the table gives medians,
each variant's ratio to `guard` (what spikes and early warnings add) and to plain.

    python bench/bench_spikes.py                 # tiny transformer, 300 steps, 3 rounds
    python bench/bench_spikes.py --micro         # per-step cost of the spike check alone, in-process
    python bench/bench_spikes.py --in-process    # the watch's step, three variants interleaved, CPU time
    python bench/bench_spikes.py --model transformer --steps 101 --rounds 2   # the 94-module transformer
    python bench/bench_spikes.py --in-process --model transformer --steps 200 --block 25

Whole-process rows give wall seconds and the child's CPU seconds (user + system, from wait4): on a
shared machine the CPU time is disturbed less by other processes than the wall time is.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_run import SCRIPT  # noqa: E402

CONFIGS = {
    "guard": "spikes: {enabled: false}\nearly_warnings: {enabled: false}\nexperiments: {enabled: false}\n",
    "+spikes": "early_warnings: {enabled: false}\nexperiments: {enabled: false}\n",
    "+early/50": "early_warnings: {every: 50}\nexperiments: {enabled: false}\n",
}


def timed(argv: list[str], cwd: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process, start-up and exit included."""
    import subprocess
    import time
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {child.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def micro(steps: int = 5000, params: int = 100) -> None:
    """The spike check's own per-step cost: the robust statistics over the window (host floats)
    and the device copy of the per-parameter gradient norms into the ring."""
    import random
    import time

    import torch
    sys.path.insert(0, str(HERE.parent))
    from nandoctor.watcher.spikes import GradientRing, SpikeDetector
    detector, ring = SpikeDetector(), GradientRing()
    norms = torch.rand(params)
    values = [(1.0 + random.random(), 1.0 + random.random()) for _ in range(steps)]
    t0 = time.perf_counter()
    for step, (loss, grad) in enumerate(values):
        ring.add(step, norms)
        detector.observe(step, loss, grad)
    per_step = (time.perf_counter() - t0) / steps
    print(f"# spike check alone: {per_step * 1e6:.1f} us per step (window 64, {params} parameters in the ring), "
          f"loadavg {os.getloadavg()[0]:.1f}")


def in_process(steps: int = 300, block: int = 50, model_name: str = "tiny") -> None:
    """Three watches on three copies of the tiny Transformer (healthy lr), stepped in interleaved
    blocks; each variant's CPU time of this process (time.process_time), which a busy machine's
    other processes disturb less than wall time."""
    import time
    import warnings

    import torch
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE.parent / "tests" / "scripts"))
    import nandoctor
    import tiny_transformer_high_lr as demo
    options = {"guard": dict(spikes=False, early_warnings=False), "+spikes": dict(early_warnings=False),
               "+early/50": dict(early_warnings={"every": 50})}
    if model_name == "tiny":
        def make():
            return demo.build_model(), demo.batches(), demo.loss_of
    else:
        from bench_overhead import build

        def make():
            torch.manual_seed(0)
            model, make_batch = build(model_name)
            batch = make_batch()

            def repeat():
                while True:
                    yield batch
            return model, repeat(), lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y)
    runs = {}
    for name, extra in options.items():
        model, data, loss_of = make()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3 if model_name == "tiny" else 1e-4)
        runs[name] = (model, optimizer, nandoctor.watch(model, optimizer, stats_every=0, warn=False, **extra),
                      data, loss_of, [])
    warnings.simplefilter("ignore")
    for _ in range(steps // block):
        for name, (model, optimizer, watch, data, loss_of, times) in runs.items():
            t0 = time.process_time()
            for _ in range(block):
                x, y = next(data)
                loss = watch.loss(loss_of(model, x, y))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times.append(time.process_time() - t0)
    base = sum(runs["guard"][-1])
    print(f"# in-process, {model_name}, {steps} steps per variant in blocks of {block}, CPU seconds, "
          f"loadavg {os.getloadavg()[0]:.1f}")
    for name, (*_, watch, _, _, times) in runs.items():
        print(f"{name:10s} {sum(times):7.2f} s {sum(times) / base:6.3f}x guard  blocks {' '.join(f'{t:.2f}' for t in times)}"
              f"  warnings {len(watch.early_warnings)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (the test's Transformer) | transformer | deep")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro", action="store_true", help="only the in-process per-step cost of the spike check")
    parser.add_argument("--in-process", action="store_true", help="the watch's step, variants interleaved, CPU time")
    parser.add_argument("--block", type=int, default=50, help="steps per interleaved block (--in-process)")
    args = parser.parse_args()
    if args.micro:
        micro()
        return
    if args.in_process:
        in_process(args.steps, args.block, args.model)
        return
    folder = tempfile.mkdtemp()
    script = Path(folder) / "train.py"
    if args.model == "tiny":
        script.write_text((HERE.parent / "tests" / "scripts" / "tiny_transformer_high_lr.py").read_text())
        script_args = ["--lr", "1e-3", "--steps", str(args.steps)]
    else:
        script.write_text(SCRIPT.format(bench=str(HERE), model=args.model, steps=args.steps))
        script_args = []
    variants: dict[str, list[str]] = {"plain": [sys.executable, str(script), *script_args]}
    for name, text in CONFIGS.items():
        config = Path(folder) / f"{name.strip('+/').replace('/', '')}.yaml"
        config.write_text(text)
        variants[name] = [sys.executable, "-m", "nandoctor", "run", "--stats-every", "0", "-q", "-c", str(config),
                          str(script), *script_args]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    before = os.getloadavg()
    timed(variants["plain"], folder)           # warm the file cache once
    for round_ in range(args.rounds):
        for name, argv in variants.items():
            results[name].append(timed(argv, folder))
            print(f"  round {round_ + 1} {name}: {results[name][-1][0]:.2f} s wall, {results[name][-1][1]:.2f} s CPU",
                  file=sys.stderr, flush=True)
    after = os.getloadavg()
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in results.items()}
    print(f"# {args.model}, {args.steps} steps, {args.rounds} alternating rounds, {os.cpu_count()} cores, "
          f"loadavg before {before[0]:.1f}/{before[1]:.1f}, after {after[0]:.1f}/{after[1]:.1f}")
    print(f"{'variant':10s} {'wall s':>7s} {'/guard':>7s} {'/plain':>7s} {'CPU s':>7s} {'/guard':>7s} {'/plain':>7s}"
          f"  all runs (wall s / CPU s)")
    for name, runs in results.items():
        print(f"{name:10s} {wall[name]:7.2f} {wall[name] / wall['guard']:7.3f} {wall[name] / wall['plain']:7.3f} "
              f"{cpu[name]:7.2f} {cpu[name] / cpu['guard']:7.3f} {cpu[name] / cpu['plain']:7.3f}  "
              f"{' '.join(f'{w:.1f}/{c:.1f}' for w, c in runs)}")


if __name__ == "__main__":
    main()
