"""A plain FSDP2 training loop with no nandoctor in it, for `torchrun -m nandoctor run` (gloo,
CPU): rank 1's batch of step 2 carries x < -8, where the `head` module's log goes NaN."""
import torch
import torch.distributed as dist

from model import build_model, shard_fsdp2, training_step

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = shard_fsdp2(build_model())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
generator = torch.Generator().manual_seed(100 + rank)
for step in range(5):
    x, y = torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    if rank == 1 and step == 2:
        x[2, 0] = -9.0
    loss = training_step(model, (x, y))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
dist.destroy_process_group()
