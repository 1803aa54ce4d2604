"""Post-mortem on a checkpoint larger than comfortably fits: time and peak memory.

Builds a torch.save checkpoint of SIZE_GB (model weights + Adam moments, one NaN planted in
the last tensor) and runs `nandoctor postmortem` on it in a fresh process, reporting wall
time and peak RSS (max resident set size) next to the file size.

    python bench/bench_postmortem.py --gb 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def build(path: str, gb: float) -> None:
    per_tensor = 64 * 1024 * 1024 // 4            # 64 MiB float32 tensors
    count = max(1, int(gb * 1024 / 64 / 3))       # weights + exp_avg + exp_avg_sq
    model, state = {}, {}
    for i in range(count):
        w = torch.randn(per_tensor) * 0.02
        model[f"layers.{i}.weight"] = w
        state[i] = {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.full_like(w, 1e-6)}
    model[f"layers.{count - 1}.weight"][123] = float("nan")
    optimizer = {"state": state, "param_groups": [{"lr": 3e-4, "params": list(range(count))}]}
    torch.save({"model": model, "optimizer": optimizer, "step": 100}, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=3.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import threading
        import nandoctor
        peaks = {"RssAnon": 0, "RssFile": 0}
        done = threading.Event()

        def sample() -> None:
            # Anonymous memory is what the process really needs; file-backed pages of the
            # memory-mapped checkpoint are page cache the kernel can drop under pressure.
            while not done.is_set():
                with open("/proc/self/status") as status:
                    for line in status:
                        key = line.split(":")[0]
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(line.split()[1]))
                time.sleep(0.01)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        report = nandoctor.postmortem(args.child)
        doc = report.to_dict()
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        print(json.dumps({"seconds": seconds, "verdict": doc["verdict"],
                          "top": doc["causes"][0]["id"] if doc["causes"] else None,
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "peak_anon_mb": peaks["RssAnon"] / 1024, "peak_file_mb": peaks["RssFile"] / 1024}))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "big.pt")
        t0 = time.perf_counter()
        build(path, args.gb)
        size_mb = os.path.getsize(path) / 2**20
        print(f"built {size_mb:.0f} MiB checkpoint in {time.perf_counter() - t0:.1f}s")
        out = subprocess.run([sys.executable, __file__, "--child", path], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"postmortem: {result['seconds']:.1f}s, verdict {result['verdict']}, top cause {result['top']}")
        print(f"peak anonymous memory {result['peak_anon_mb']:.0f} MiB ({result['peak_anon_mb'] / size_mb:.2f}x the file); "
              f"peak file-backed (mmap, reclaimable) {result['peak_file_mb']:.0f} MiB; peak RSS {result['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
