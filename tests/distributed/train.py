"""A plain training loop under torchrun, guarded by nandoctor.watch.

Environment: MODE ddp|fsdp2, STEPS, OUT (bundle folder), BAD "kind:rank:step" with kind
`batch` (a NaN in that rank's batch) or `forward` (x < -8: log of a negative in Net.forward),
CHECK_EVERY, POLICY. Prints one line per rank at the end: "RANK r steps n".
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nandoctor                                   # noqa: E402
from model import build_model, training_step       # noqa: E402


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    net = build_model()
    mode = os.environ.get("MODE", "ddp")
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        for layer in net.body:
            if any(p.requires_grad for p in layer.parameters()):
                fully_shard(layer)
        fully_shard(net)
        model = net
    else:
        model = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kind, bad_rank, bad_step = (os.environ.get("BAD", "none:-1:-1").split(":") + ["-1", "-1"])[:3]
    watch = nandoctor.watch(model, optimizer, out=os.environ.get("OUT", "bundles"),
                            check_every=int(os.environ.get("CHECK_EVERY", "1")),
                            on_nonfinite=os.environ.get("POLICY", "raise"))
    steps = int(os.environ.get("STEPS", "10"))
    try:
        done = train(model, optimizer, watch, steps, rank, kind, int(bad_rank), int(bad_step))
    except nandoctor.NonFiniteError as err:
        # Recorded for the test (when each rank stopped, and what it was told), then re-raised:
        # the exit code is the one a user's torchrun job shows.
        with open(os.path.join(os.environ.get("OUT", "bundles"), f"stopped-rank-{rank}.json"), "w") as f:
            json.dump({"time": time.time(), "step": err.step, "bundle": str(err.bundle), "message": str(err)}, f)
        raise
    watch.close()
    print(f"RANK {rank} steps {done}", flush=True)
    dist.destroy_process_group()


def train(model, optimizer, watch, steps, rank, kind, bad_rank, bad_step):
    generator = torch.Generator().manual_seed(100 + rank)
    done = 0
    for step in range(steps):
        x = torch.randn(8, 4, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        if rank == bad_rank and step == bad_step:
            if kind == "batch":
                x[2, 1] = float("nan")
            else:
                x[2, 0] = -9.0
        with watch.step((x, y)):
            loss = watch.loss(training_step(model, (x, y)))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        done += 1
    return done


if __name__ == "__main__":
    main()
