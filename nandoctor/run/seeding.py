"""Deterministic seeding: every step re-seeds from (seed, step)."""
from __future__ import annotations

import random
import sys

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % (2**32))


def step_seed(seed: int, step: int, salt: int) -> int:
    # Every step re-seeds from (seed, step): batches match across precisions and a replayed
    # step draws the same dropout masks, without snapshotting RNG state on the normal path.
    return (seed * 1_000_003 + step * 7919 + salt) % (2**63)
