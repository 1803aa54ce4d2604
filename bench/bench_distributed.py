"""Cost of `nandoctor.watch` under torchrun: the per-step flag exchange (2 processes, gloo, CPU).

    python3 bench/bench_distributed.py [--steps 300] [--repeats 3] [--out bench/distributed_results.txt]

Starts `torchrun --nproc_per_node=2` on this file. Each rank trains the same MLP under DDP and
under FSDP2 (`fully_shard`) in four ways: the plain loop; `watch` checking every step (guard
only: stats_every=0); the same without the rank-aware layer (distributed=False); and
check_every=10. All eight configurations live at once and run in round-robin blocks of 10 steps.
For each, the median and the best block are reported (on a loaded machine the best block is the
steadier number). It also times the exchange alone: one all-reduce of a world_size x 9 float
tensor on a gloo group.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 10          # steps per timed block (a multiple of check_every=10)
# "rank-blind": watch(distributed=False), each rank guarding itself alone (no pre-collective
# check, no exchange): what the rank-aware layer adds is the difference to "every step".
GUARDS = ("off", "rank-blind", "every step", "check_every=10")


def worker(steps: int, repeats: int, result_path: str) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    sys.path.insert(0, str(ROOT))
    import nandoctor

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)

    def build(mode: str):
        torch.manual_seed(0)
        net = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(256, 256), nn.GELU())], nn.Linear(256, 10))
        if mode == "fsdp2":
            from torch.distributed.fsdp import fully_shard
            for layer in net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(net)
            return net
        return nn.parallel.DistributedDataParallel(net)

    def setup(mode: str, guard: str):
        model = build(mode)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        watch = None
        if guard != "off":
            watch = nandoctor.watch(model, optimizer, out=tempfile.mkdtemp(), stats_every=0,
                                    check_every=10 if guard == "check_every=10" else 1,
                                    distributed=False if guard == "rank-blind" else "auto")
        return model, optimizer, watch

    g = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(64, 256, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(8)]

    def one(model, optimizer, watch, i: int) -> None:
        x, y = batches[i % len(batches)]
        if watch is not None:
            with watch.step((x, y)):
                loss = watch.loss(nn.functional.cross_entropy(model(x), y))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    # Every configuration lives at once; blocks of BLOCK steps run round-robin, so a burst of load
    # from elsewhere on the machine hits every configuration alike.
    configs = {f"{mode}|{guard}": setup(mode, guard) for mode in ("ddp", "fsdp2")
               for guard in GUARDS}
    for key, (model, optimizer, watch) in configs.items():
        for i in range(20):
            one(model, optimizer, watch, i)
    results: dict[str, list[float]] = {key: [] for key in configs}
    step = 0
    for _ in range(max(1, steps // BLOCK) * repeats):
        for key, (model, optimizer, watch) in configs.items():
            dist.barrier()
            began = time.perf_counter()
            for i in range(BLOCK):
                one(model, optimizer, watch, step + i)
            dist.barrier()
            results[key].append((time.perf_counter() - began) / BLOCK)
        step += BLOCK
    for model, optimizer, watch in configs.values():
        if watch is not None:
            watch.close()

    group = dist.new_group(backend="gloo")
    table = torch.zeros(dist.get_world_size(), 9)      # the exchange: 8 flags + first bad step
    for _ in range(50):
        dist.all_reduce(table, group=group)
    began = time.perf_counter()
    for _ in range(1000):
        dist.all_reduce(table, group=group)
    exchange = (time.perf_counter() - began) / 1000
    if rank == 0:
        Path(result_path).write_text(json.dumps({"steps": results, "exchange_s": exchange}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "distributed_results.txt")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = Path(tempfile.mkdtemp()) / "result.json"
    launcher = [shutil.which("torchrun")] if shutil.which("torchrun") else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANDOCTOR_BENCH_WORKER": f"{args.steps}:{args.repeats}:{result}"}
    subprocess.run([*launcher, "--nproc_per_node=2", f"--master_port={port}", __file__], env=env, check=True,
                   timeout=1800, stdout=subprocess.DEVNULL)
    data = json.loads(result.read_text())
    import torch
    lines = [f"bench_distributed: 2 ranks, gloo, CPU, torch {torch.__version__}, MLP 4x256 (264k params), batch 64, "
             f"{args.steps} steps x {args.repeats} repeats in blocks of {BLOCK}, {os.cpu_count()} cores",
             f"machine load average at the start: {os.getloadavg()[0]:.1f}",
             f"flag exchange alone (all-reduce of a 2x9 float tensor, gloo): {data['exchange_s'] * 1e6:.0f} us", "",
             f"{'mode':6s} {'watch':16s} {'median ms/step':>15s} {'vs plain':>9s} {'best block':>11s} {'vs plain':>9s}"]
    for mode in ("ddp", "fsdp2"):
        plain = statistics.median(data["steps"][f"{mode}|off"])
        best_plain = min(data["steps"][f"{mode}|off"])
        for guard in GUARDS:
            times = data["steps"][f"{mode}|{guard}"]
            value, best = statistics.median(times), min(times)
            lines.append(f"{mode:6s} {guard:16s} {value * 1e3:15.2f} {value / plain:8.3f}x {best * 1e3:11.2f} "
                         f"{best / best_plain:8.3f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    if os.environ.get("NANDOCTOR_BENCH_WORKER"):
        steps, repeats, path = os.environ["NANDOCTOR_BENCH_WORKER"].split(":", 2)
        worker(int(steps), int(repeats), path)
    else:
        main()
