"""One rank of a distributed crash bundle, made replayable on one process.

A bundle from a torchrun job (watcher/distributed.py) is a folder `step-N/` holding rank 0's
`manifest.json` (which ranks the NaN was born on, which were only contaminated, which wrote)
and one complete single-rank bundle per rank, `rank-R/`. `open_rank_bundle` picks the rank to
replay (asked for, else the first origin rank) and, when the state was sharded (FSDP2), returns
a bundle whose weights and optimizer state are the full tensors, put together from every rank's
shard with the offsets each rank recorded. Everything is read as JSON and safetensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ...errors import InputError
from ...load.bundle import MODEL_FILE, OPTIMIZER_FILE, Bundle, read_bundle


class ConsolidatedBundle(Bundle):
    """A rank's bundle whose model and optimizer tensors are the consolidated full tensors."""

    def __init__(self, path: Path, manifest: Any, full: dict[str, dict[str, torch.Tensor]]):
        super().__init__(path=path, manifest=manifest)
        self._full = full

    def tensors(self, name: str) -> dict[str, Any]:
        if name in self._full:
            return dict(self._full[name])
        return super().tensors(name)


def open_rank_bundle(path: str | Path, rank: Optional[int] = None) -> tuple[Bundle, Optional[dict[str, Any]]]:
    """The bundle to replay and, for a distributed bundle, its facts (rank, origin, contaminated).

    A single-process bundle comes back as it is (asking for a rank of it is an input error).
    """
    found = read_bundle(path)
    dist_facts = (found.manifest.detail or {}).get("distributed")
    if not isinstance(dist_facts, dict):
        if rank is not None:
            raise InputError(f"crash bundle {found.path} comes from a single process, so it has no ranks; replay it "
                             "without --rank.")
        return found, None
    top, top_facts = found, dist_facts
    if dist_facts.get("rank") is not None:          # a rank-R folder was given: its parent holds the rest
        parent = found.path.parent
        if (parent / "manifest.json").is_file():
            top = read_bundle(parent)
            top_facts = (top.manifest.detail or {}).get("distributed") or dist_facts
        if rank is None:
            rank = int(dist_facts["rank"])
    ranks = {int(r): name for r, name in (top_facts.get("ranks") or {}).items()}
    origin = [int(r) for r in top_facts.get("origin_ranks") or []]
    chosen = rank if rank is not None else (origin[0] if origin else 0)
    if ranks and chosen not in ranks:
        raise InputError(f"crash bundle {top.path} holds ranks {', '.join(map(str, sorted(ranks)))}; there is no rank "
                         f"{chosen}.")
    folder = top.path / ranks[chosen] if ranks else found.path
    if not (folder / "manifest.json").is_file():
        written = top_facts.get("written")
        raise InputError(f"crash bundle {top.path}: rank {chosen} wrote no part ({folder.name} is missing"
                         + (f"; the ranks that wrote theirs: {', '.join(map(str, written))}" if written else "")
                         + "). Replay another rank with --rank R.")
    part = read_bundle(folder)
    facts = {**{k: v for k, v in top_facts.items() if k not in ("ranks",)}, "rank": chosen,
             "replayed_origin": chosen in origin, "path": str(top.path)}
    shards = (part.manifest.detail or {}).get("shards") or {}
    if not any(shards.get(k) for k in ("model", "optimizer")):
        return part, facts
    siblings = {r: read_bundle(top.path / name) for r, name in ranks.items()
                if r != chosen and (top.path / name / "manifest.json").is_file()}
    siblings[chosen] = part
    full = {MODEL_FILE: _consolidate(siblings, MODEL_FILE, "model", chosen),
            OPTIMIZER_FILE: _consolidate(siblings, OPTIMIZER_FILE, "optimizer", chosen)}
    facts["consolidated_from"] = sorted(siblings)
    return ConsolidatedBundle(part.path, part.manifest, full), facts


def _consolidate(parts: dict[int, Bundle], file: str, kind: str, chosen: int) -> dict[str, torch.Tensor]:
    """Full tensors from every rank's shard; tensors that were not sharded come from `chosen`."""
    own = parts[chosen].tensors(file)
    placements = ((parts[chosen].manifest.detail or {}).get("shards") or {}).get(kind) or {}
    out: dict[str, torch.Tensor] = {k: v for k, v in own.items() if k not in placements}
    for key, placement in placements.items():
        full = torch.zeros(placement["global_shape"], dtype=own[key].dtype if key in own else torch.float32)
        covered = 0
        for r, bundle in parts.items():
            shard = bundle.tensors(file).get(key) if r != chosen else own.get(key)
            where = (((bundle.manifest.detail or {}).get("shards") or {}).get(kind) or {}).get(key)
            if shard is None or where is None or shard.numel() == 0:
                continue
            index = tuple(slice(o, o + s) for o, s in zip(where["offsets"], shard.shape))
            full[index] = shard.to(full.dtype)
            covered += shard.numel()
        if covered != full.numel():
            raise InputError(f"crash bundle {parts[chosen].path.parent}: the shards of {key} cover {covered} of its "
                             f"{full.numel()} elements; a rank's part is missing, so its full state cannot be rebuilt. "
                             "Replay needs every rank's part of a sharded (FSDP2) run.")
        out[key] = full
    return out


def describe_ranks(facts: dict[str, Any]) -> str:
    """One note for the report: which rank is replayed, where the value was born."""
    origin = facts.get("origin_ranks") or []
    contaminated = facts.get("contaminated_ranks") or []
    rank = facts.get("rank")
    if facts.get("born_in_collective"):
        where = "born in the gradient collective (every rank's gradients were finite before it)"
    elif origin:
        where = f"born on rank {', '.join(map(str, origin))}"
    else:
        where = "of unknown origin rank"
    parts = [f"distributed run of {facts.get('world_size')} ranks ({facts.get('kind')}): the NaN/Inf was {where}"]
    if contaminated:
        parts.append(f"rank {', '.join(map(str, contaminated))} only received it through the collective")
    parts.append(f"this replay runs rank {rank}'s step alone (its batch, its RNG, "
                 + ("the state consolidated from every rank's shard" if facts.get("consolidated_from") else
                    "its copy of the state") + "); its gradients are not averaged with the other ranks'")
    if rank not in origin and origin:
        parts.append(f"rank {rank} was only contaminated, so its own step may stay finite: replay rank {origin[0]}")
    return "; ".join(parts)
