"""Deterministic seeding: every step re-seeds from (seed, step)."""
from __future__ import annotations

import random
import sys

import torch


def seed_everything(seed: int, cpu_only: bool = False) -> None:
    """Seed Python, NumPy and torch. `cpu_only` seeds torch's CPU generator alone: while no
    accelerator is initialised, `torch.manual_seed` queues a seed for each one and formats a
    stack trace to do so (~1 ms per call), which a CPU run re-seeding every step never needs."""
    random.seed(seed)
    if cpu_only:
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % (2**32))


def step_seed(seed: int, step: int, salt: int) -> int:
    # Every step re-seeds from (seed, step): batches match across precisions and a replayed
    # step draws the same dropout masks, without snapshotting RNG state on the normal path.
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63)
