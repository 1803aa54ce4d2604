"""The modern training stack (docs/guides/compatibility.md): each row of the compatibility matrix
that no other test file backs. Wrapped optimizers, torch.func transforms, autocast and GradScaler in
the user's own loop, fused attention paths, reentrant checkpointing, GANs, BatchNorm buffers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nandoctor
from nandoctor.load.bundle import read_bundle


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def steps(model, opt, count, bad_at=None):
    for step in range(count):
        x = torch.randn(8, 4)
        if step == bad_at:
            x[3, 1] = float("nan")
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


# ---- wrapped optimizers ------------------------------------------------------------------------

def test_accelerate_prepared_optimizer_is_watched_on_the_torch_one(tmp_path):
    # Regression (issue 18): AcceleratedOptimizer subclasses torch.optim.Optimizer without running
    # its __init__, so hooking it raised "no attribute '_optimizer_step_pre_hooks'".
    accelerate = pytest.importorskip("accelerate")
    model, opt = tiny()
    model, wrapped = accelerate.Accelerator(cpu=True).prepare(model, opt)
    assert type(wrapped).__name__ == "AcceleratedOptimizer"
    watch = nandoctor.watch(model, wrapped, out=tmp_path, warn=False)
    assert watch.optimizer is opt
    with pytest.raises(nandoctor.NonFiniteError) as caught:
        steps(model, wrapped, 4, bad_at=2)
    assert caught.value.step == 2 and caught.value.bundle is not None


def test_lightning_and_deepspeed_style_chains_are_unwrapped(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch.core.optimizer")
    model, opt = tiny()

    class EngineOptimizer(torch.optim.Optimizer):     # DeepSpeed-style: a torch subclass around `.optimizer`
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

        def step(self, closure=None):
            return self.optimizer.step(closure)

    chain = lightning.LightningOptimizer(EngineOptimizer(opt))
    watch = nandoctor.watch(model, chain, out=tmp_path, warn=False)
    assert watch.optimizer is opt
    steps(model, opt, 3)
    assert watch.step_index == 3
    watch.close()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        nandoctor.watch(model, object(), out=tmp_path)
