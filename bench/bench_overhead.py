"""Recording overhead: a plain training loop vs nandoctor's instrumented step vs detect_anomaly.

Each (model, variant) runs in its own process so peak memory (max RSS) is its own. Prints the
median step time (wall clock and process CPU time) and peak RSS, and their ratios to the plain
loop side by side. Both loops' timed step includes fetching the batch (nandoctor's step calls
get_batch); nandoctor's also includes its per-step re-seeding.

    python bench/bench_overhead.py                 # all models, 30 timed steps each
    python bench/bench_overhead.py --steps 10 --models mlp --threads 1 --no-anomaly
    python bench/bench_overhead.py --baseline-tree /tmp/old   # also time another checkout's step
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


def build(name: str) -> tuple[nn.Module, callable]:
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        return model, lambda: (torch.randn(256, 256), torch.randint(0, 10, (256,)))
    if name == "transformer":    # ~100 modules
        layer = nn.TransformerEncoderLayer(256, 8, 1024, batch_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, 9, enable_nested_tensor=False), nn.Linear(256, 10))
        return _Pool(model), lambda: (torch.randn(16, 128, 256), torch.randint(0, 10, (16,)))
    if name == "deep":           # >= 1000 modules: 100-layer transformer, d=128, 128 tokens
        layer = nn.TransformerEncoderLayer(128, 4, 256, batch_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, 100, enable_nested_tensor=False), nn.Linear(128, 10))
        return _Pool(model), lambda: (torch.randn(8, 128, 128), torch.randint(0, 10, (8,)))
    if name == "deep-tiny":      # worst case: 1000 modules whose ops are tiny, so per-op overhead dominates
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, 100, enable_nested_tensor=False), nn.Linear(64, 10))
        return _Pool(model), lambda: (torch.randn(8, 64, 64), torch.randint(0, 10, (8,)))
    if name == "blocks":         # 1002 modules: 250 blocks of 64-wide Linear, LayerNorm, GELU (tiny ops)
        blocks = [nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.GELU()) for _ in range(250)]
        model = nn.Sequential(*blocks, nn.Linear(64, 10))
        return model, lambda: (torch.randn(32, 64), torch.randint(0, 10, (32,)))
    if name == "gpt2":           # GPT-2 small's shape: 12 pre-norm layers, 768 wide, 12 heads, 3072 FFN
        layer = nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu", batch_first=True, norm_first=True)
        model = nn.Sequential(nn.TransformerEncoder(layer, 12, enable_nested_tensor=False), nn.Linear(768, 10))
        return _Pool(model), lambda: (torch.randn(4, 128, 768), torch.randint(0, 10, (4,)))
    raise SystemExit(f"unknown model {name}")


class _Pool(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.encoder, self.head = inner[0], inner[1]

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def child(name: str, variant: str, steps: int, warmup: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    model, batch = build(name)
    modules = sum(1 for _ in model.modules())
    times, cpu = [], []
    if variant == "nandoctor":
        from nandoctor.load.config import resolve_config
        from nandoctor.load.model_file import ModelFile
        from nandoctor.trace.vocab import Precision
        from nandoctor.run.recorder import Recorder
        from nandoctor.run.session import TrainingSession
        spec = ModelFile(path=__import__("pathlib").Path(__file__), module=None, build_model=lambda: build(name)[0],
                         get_batch=lambda step: batch())
        session = TrainingSession(spec, resolve_config(None, cwd="/").values, Precision.FP32, torch.device("cpu"))
        recorder = Recorder(session.model).attach()
        for step in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            session.run_step(step, recorder)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(warmup + steps):
            torch.manual_seed(step)
            t0, c0 = time.perf_counter(), time.process_time()
            x, y = batch()
            opt.zero_grad(set_to_none=True)
            if variant == "anomaly":
                with torch.autograd.detect_anomaly():
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
            else:
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
            opt.step()
            loss.item()        # a real loop logs its loss: one sync per step, as nandoctor's
            if step >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {"model": name, "variant": variant, "modules": modules, "step_ms": 1000 * statistics.median(times),
            "cpu_ms": 1000 * statistics.median(cpu),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "transformer", "deep", "deep-tiny"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    parser.add_argument("--no-anomaly", action="store_true", help="skip the detect_anomaly variant")
    parser.add_argument("--baseline-tree", default=None, help="another checkout whose step is timed beside this one")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.warmup, args.threads)))
        return
    variants = [("plain", "plain", None), ("nandoctor", "nandoctor", None)]
    if args.baseline_tree:
        variants.append(("baseline", "nandoctor", os.path.abspath(args.baseline_tree)))
    if not args.no_anomaly:
        variants.append(("anomaly", "anomaly", None))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}, "
          f"median of {args.steps} steps; each cell: wall ms, ratio to plain | CPU ms, ratio to plain")
    print(f"{'model':12s} {'modules':>7s} {'plain':>19s} " + " ".join(f"{label:>27s}" for label, _, _ in variants[1:])
          + f" {'RSS plain':>10s} {'RSS nd':>8s}")
    for name in args.models:
        rows = {}
        for label, variant, tree in variants:
            env = dict(os.environ, PYTHONPATH=tree or here)
            out = subprocess.run([sys.executable, __file__, "--child", name, variant, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True, env=env)
            rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
        p = rows["plain"]
        cells = [f"{rows[label]['step_ms']:8.1f} {rows[label]['step_ms'] / p['step_ms']:4.2f} |"
                 f" {rows[label]['cpu_ms']:7.1f} {rows[label]['cpu_ms'] / p['cpu_ms']:4.2f}" for label, _, _ in variants[1:]]
        print(f"{name:12s} {p['modules']:7d} {p['step_ms']:8.1f} | {p['cpu_ms']:8.1f} " + " ".join(f"{c:>27s}" for c in cells)
              + f" {p['peak_rss_mb']:10.0f} {rows['nandoctor']['peak_rss_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
