"""Whole-process cost of spike detection and sampled early warnings under `nandoctor run`.

The script is bench_run.py's: an ordinary loop over bench_overhead.py's transformer (94 modules,
nn.TransformerEncoderLayer, so nn.MultiheadAttention's logits are measured on sampled steps).
Variants, each a fresh process (start-up, imports and exit included):

    plain          python train.py
    guard          nandoctor run, spikes and early warnings off (config), --stats-every 0
    +spikes        the same with spike detection (the default)
    +early/50      spikes and early warnings sampled every 50 steps (the defaults)

Runs alternate so a shared machine's load hits all variants alike; the table gives medians,
each variant's ratio to `guard` (what spikes and early warnings add) and to plain.

    python bench/bench_spikes.py                 # transformer, 200 steps, 3 rounds
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
from bench_run import SCRIPT, timed  # noqa: E402

CONFIGS = {
    "guard": "spikes: {enabled: false}\nearly_warnings: {enabled: false}\nexperiments: {enabled: false}\n",
    "+spikes": "early_warnings: {enabled: false}\nexperiments: {enabled: false}\n",
    "+early/50": "early_warnings: {every: 50}\nexperiments: {enabled: false}\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    script = Path(folder) / "train.py"
    script.write_text(SCRIPT.format(bench=str(HERE), model=args.model, steps=args.steps))
    variants: dict[str, list[str]] = {"plain": [sys.executable, str(script)]}
    for name, text in CONFIGS.items():
        config = Path(folder) / f"{name.strip('+/').replace('/', '')}.yaml"
        config.write_text(text)
        variants[name] = [sys.executable, "-m", "nandoctor", "run", "--stats-every", "0", "-q", "-c", str(config),
                          str(script)]
    results: dict[str, list[float]] = {name: [] for name in variants}
    before = os.getloadavg()
    timed(variants["plain"], folder)           # warm the file cache once
    for _ in range(args.rounds):
        for name, argv in variants.items():
            results[name].append(timed(argv, folder)[0])
    after = os.getloadavg()
    medians = {name: statistics.median(runs) for name, runs in results.items()}
    print(f"# {args.model}, {args.steps} steps, {args.rounds} alternating rounds, {os.cpu_count()} cores, "
          f"loadavg before {before[0]:.1f}/{before[1]:.1f}, after {after[0]:.1f}/{after[1]:.1f}")
    print(f"{'variant':10s} {'median s':>9s} {'/guard':>7s} {'/plain':>7s}  all runs (s)")
    for name, runs in results.items():
        print(f"{name:10s} {medians[name]:9.2f} {medians[name] / medians['guard']:7.3f} "
              f"{medians[name] / medians['plain']:7.3f}  {' '.join(f'{s:.2f}' for s in runs)}")


if __name__ == "__main__":
    main()
