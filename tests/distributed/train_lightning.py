"""A LightningModule trained by `lightning.Trainer(strategy="ddp")` under torchrun, guarded by
NanDoctorCallback. Environment: OUT, BAD "kind:rank:step" as in train.py, STEPS, STRATEGY (`ddp`,
or `fsdp2`: ModelParallelStrategy, the module sharded with fully_shard)."""
import os
import sys

import lightning
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stops import record_stop                                          # noqa: E402
import nandoctor                                                   # noqa: E402
from nandoctor.integrations.lightning import NanDoctorCallback     # noqa: E402
from lit_module import Module, ShardedModule                       # noqa: E402

KIND, BAD_RANK, BAD_STEP = os.environ.get("BAD", "none:-1:-1").split(":")


class Batches(torch.utils.data.Dataset):
    """Step s of rank r: a fixed random batch; the bad one holds a NaN or an x < -8."""

    def __init__(self, steps: int, rank: int):
        self.steps, self.rank = steps, rank

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        g = torch.Generator().manual_seed(1000 * self.rank + step)
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        if self.rank == int(BAD_RANK) and step == int(BAD_STEP):
            x[2, 1 if KIND == "batch" else 0] = float("nan") if KIND == "batch" else -9.0
        return x, y


def main():
    rank = int(os.environ["RANK"])
    steps = int(os.environ.get("STEPS", "8"))
    out = os.environ.get("OUT", "bundles")
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Batches(steps, rank), batch_size=None, shuffle=False)
    fsdp2 = os.environ.get("STRATEGY", "ddp") == "fsdp2"
    if fsdp2:
        from lightning.pytorch.strategies import ModelParallelStrategy
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        strategy = "ddp"
    trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                use_distributed_sampler=False, callbacks=[NanDoctorCallback(out=out)])
    try:
        trainer.fit(ShardedModule() if fsdp2 else Module(), loader)
    except nandoctor.NonFiniteError as err:
        record_stop(out, rank, err)
        raise
    print(f"RANK {rank} steps {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
