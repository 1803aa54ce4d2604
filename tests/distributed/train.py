"""Plain training loops under torchrun, guarded by nandoctor.watch.

Environment: RUNS, runs done one after the other in the same processes (one torchrun start-up
pays for them all), separated by ";", each "mode:kind:rank:step:steps[:check_every]" with mode `ddp` or
`fsdp2` and kind `none`, `batch` (a NaN in that rank's batch at that step) or `forward`
(x < -8: log of a negative in the `head` module's forward) or `dcp` (after the steps, a NaN in
that rank's shard of body.0.weight, saved with torch.distributed.checkpoint to
OUT/run-i-checkpoint) or `hang` (that rank stops answering after that step's backward). DIST_TIMEOUT: the
watch's coordination timeout. Run i writes its bundles to
OUT/run-i. A run's NonFiniteError is recorded in OUT/run-i/stopped-rank-R.json; the last run re-raises
it, so it ends the job with the exit code a user's torchrun job shows. Each finished run prints
"RUN i RANK r steps n".
"""
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stops import record_stop                                          # noqa: E402
import nandoctor                                   # noqa: E402
from model import build_model, shard_fsdp2, training_step       # noqa: E402


def wrap(net, mode):
    if mode == "fsdp2":
        return shard_fsdp2(net)
    return torch.nn.parallel.DistributedDataParallel(net)


def run(index, spec, out_root, rank, last):
    mode, kind, bad_rank, bad_step, steps, *every = spec.split(":")
    torch.manual_seed(0)
    model = wrap(build_model(), mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    out = os.path.join(out_root, f"run-{index}")
    watch = nandoctor.watch(model, optimizer, out=out, check_every=int(every[0]) if every else 1,
                            distributed={"timeout": float(os.environ.get("DIST_TIMEOUT", "300"))})
    generator = torch.Generator().manual_seed(100 + rank)
    done = 0
    try:
        for step in range(int(steps)):
            x = torch.randn(8, 4, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            if rank == int(bad_rank) and step == int(bad_step):
                if kind == "batch":
                    x[2, 1] = float("nan")
                elif kind == "forward":
                    x[2, 0] = -9.0
            with watch.step((x, y)):
                loss = watch.loss(training_step(model, (x, y)))
                loss.backward()
                if kind == "hang" and rank == int(bad_rank) and step == int(bad_step):
                    time.sleep(3600)       # wedged after the gradient collective: the others must not wait forever
                optimizer.step()
                optimizer.zero_grad()
            done += 1
    except nandoctor.NonFiniteError as err:
        record_stop(out, rank, err)
        if last:
            raise
        return
    watch.close()
    if kind == "dcp":
        # A sharded checkpoint whose rank-`bad_rank` shard of body.0.weight holds a NaN.
        import torch.distributed.checkpoint as dcp
        if rank == int(bad_rank):
            with torch.no_grad():
                dict(model.named_parameters())["body.0.weight"].to_local()[0, 0] = float("nan")
        dcp.save({"model": model.state_dict()}, checkpoint_id=os.path.join(out_root, f"run-{index}-checkpoint"))
    print(f"RUN {index} RANK {rank} steps {done}", flush=True)


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    runs = os.environ["RUNS"].split(";")
    for index, spec in enumerate(runs):
        run(index, spec, os.environ.get("OUT", "bundles"), rank, last=index == len(runs) - 1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
