"""Recording overhead: a plain training loop vs nandoctor's instrumented step vs detect_anomaly.

Each (model, variant) runs in its own process so peak memory (max RSS) is its own. Prints the
median step time and peak RSS, and their ratios to the plain loop side by side.

    python bench/bench_overhead.py                 # all models, 30 timed steps each
    python bench/bench_overhead.py --steps 10 --models mlp
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
    raise SystemExit(f"unknown model {name}")


class _Pool(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.encoder, self.head = inner[0], inner[1]

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def child(name: str, variant: str, steps: int, warmup: int) -> dict:
    model, batch = build(name)
    modules = sum(1 for _ in model.modules())
    times = []
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
            t0 = time.perf_counter()
            session.run_step(step, recorder)
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(warmup + steps):
            torch.manual_seed(step)
            x, y = batch()
            t0 = time.perf_counter()
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
    return {"model": name, "variant": variant, "modules": modules, "step_ms": 1000 * statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mlp", "transformer", "deep", "deep-tiny"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps, args.warmup)))
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, median of {args.steps} steps")
    print(f"{'model':12s} {'modules':>7s} {'plain ms':>9s} {'nandoctor':>10s} {'ratio':>6s} {'anomaly':>9s} {'ratio':>6s}"
          f" {'RSS plain':>10s} {'RSS nd':>8s} {'ratio':>6s}")
    for name in args.models:
        rows = {}
        for variant in ("plain", "nandoctor", "anomaly"):
            out = subprocess.run([sys.executable, __file__, "--child", name, variant, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup)], capture_output=True, text=True, check=True)
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        p, n, a = rows["plain"], rows["nandoctor"], rows["anomaly"]
        print(f"{name:12s} {p['modules']:7d} {p['step_ms']:9.1f} {n['step_ms']:10.1f} {n['step_ms'] / p['step_ms']:6.2f}"
              f" {a['step_ms']:9.1f} {a['step_ms'] / p['step_ms']:6.2f} {p['peak_rss_mb']:10.0f} {n['peak_rss_mb']:8.0f}"
              f" {n['peak_rss_mb'] / p['peak_rss_mb']:6.2f}")


if __name__ == "__main__":
    main()
