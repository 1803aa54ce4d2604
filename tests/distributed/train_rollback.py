"""A data stream with an injected bad sample under torchrun (DDP, gloo): `rollback` survives it.

Sample BAD of the stream holds a NaN; the DistributedSampler hands it to rank BAD % 2 only, at
step BAD // 8 (batches of 4 per rank). The watch rolls every rank back on the same step (the
all-reduce spreads the NaN to the other rank's gradients, and the exchanged flags make every
rank take the same branch). Each rank writes OUT/rank-R.json: its skipped steps, the steps it
rolled back, its last loss and a checksum of its weights (DDP ranks must stay identical).
Then a loss spike on rank 1 alone with on_spike="skip": OUT/spike-rank-R.json. Then the first
run again with the model sharded by FSDP2 (fully_shard): each rank keeps a copy of its own
shards and optimizer state, and puts them back: OUT/fsdp2/rank-R.json.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nandoctor                                   # noqa: E402
from model import build_model, shard_fsdp2, training_step       # noqa: E402

BAD = int(os.environ.get("BAD", "21"))
SPIKE_STEP = 12


class Stream(torch.utils.data.Dataset):
    def __init__(self, n=64, bad=BAD):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.bad = bad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i].clone()
        if i == self.bad:
            x[1] = float("nan")
        return x, self.y[i]


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = os.environ["OUT"]
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dataset = Stream()
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler)
    rollback_run(model, optimizer, loader, out, f"rank-{rank}.json")

    # A loss spike on rank 1 alone (a constant added to its loss: its gradients, and so the
    # all-reduced gradient norm, do not move): on_spike="skip" must skip the step on every rank.
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    clean = torch.utils.data.DataLoader(Stream(bad=-1), batch_size=4, sampler=sampler)
    watch = nandoctor.watch(model, optimizer, out=os.path.join(out, "spike"), on_spike="skip",
                            spikes={"warmup": 4, "window": 16})
    step = 0
    for epoch in range(2):
        for batch in clean:
            loss = training_step(model, batch)
            watch.loss(loss + (100.0 if rank == 1 and step == SPIKE_STEP else 0.0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
    watch.close()
    record(out, f"spike-rank-{rank}.json", model, watch, loss)

    torch.manual_seed(0)
    model = shard_fsdp2(build_model())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rollback_run(model, optimizer, loader, os.path.join(out, "fsdp2"), f"rank-{rank}.json")
    dist.destroy_process_group()


def rollback_run(model, optimizer, loader, out, name):
    os.makedirs(out, exist_ok=True)
    watch = nandoctor.watch(model, optimizer, out=out, on_nonfinite="rollback", rollback={"every": 2, "budget": 2})
    loss = None
    for batch in loader:
        loss = training_step(model, batch)
        watch.loss(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    watch.close()
    record(out, name, model, watch, loss)


def record(out, name, model, watch, loss):
    # A sharded (FSDP2) parameter is summed whole: the ranks must agree on the full model.
    checksum = float(sum((p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().sum()
                         for p in model.parameters()))
    with open(os.path.join(out, name), "w") as f:
        json.dump({"skipped": [h["step"] for h in watch.history if h["skipped"]],
                   "rolled_back": [e["step"] for e in watch.keep_alive.records if e["policy"] == "rollback"],
                   "loss": loss.item(), "checksum": checksum, "steps": watch.step_index}, f)


if __name__ == "__main__":
    main()
