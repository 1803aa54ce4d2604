"""Where each shard of a torch.distributed.checkpoint tensor lives: which rank wrote it, in which
file, at which offsets; and which of those shards hold NaN/Inf.

DCP's metadata lists every tensor's chunks (offsets and sizes in the full tensor) and, per chunk,
the storage file. FileSystemWriter names a rank's files `__<rank>_<n>.distcp`, so the file names
the rank that saved the chunk (FSDP2 and DTensor checkpoints: the rank that held that shard).
A checkpoint written with other names gives the file without a rank.
"""
from __future__ import annotations

import re
from typing import Any

import torch

_RANK_FILE = re.compile(r"^__(\d+)_(\d+)\.distcp$")


def shard_locations(metadata: Any, key: str) -> list[dict[str, Any]]:
    """[{rank, file, offsets, sizes}] for the chunks of `key` in DCP `metadata`; [] when unsharded
    (one chunk covering the whole tensor) or when the metadata says nothing."""
    meta = metadata.state_dict_metadata.get(key)
    chunks = list(getattr(meta, "chunks", []) or [])
    if len(chunks) < 2:
        return []
    files: dict[tuple[int, ...], str] = {}
    for index, info in (getattr(metadata, "storage_data", None) or {}).items():
        if getattr(index, "fqn", None) == key and getattr(index, "offset", None) is not None:
            files[tuple(int(o) for o in index.offset)] = str(getattr(info, "relative_path", ""))
    out = []
    for chunk in chunks:
        offsets = [int(o) for o in chunk.offsets]
        file = files.get(tuple(offsets))
        match = _RANK_FILE.match(file or "")
        out.append({"rank": int(match.group(1)) if match else None, "file": file, "offsets": offsets,
                    "sizes": [int(s) for s in chunk.sizes]})
    return out


def nonfinite_shards(tensor: torch.Tensor, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shards of the full `tensor` that hold NaN/Inf, with their counts."""
    out = []
    for shard in shards:
        part = tensor[tuple(slice(o, o + s) for o, s in zip(shard["offsets"], shard["sizes"]))]
        if not (part.is_floating_point() or part.is_complex()):
            continue
        nan, inf = int(torch.isnan(part).sum()), int(torch.isinf(part).sum())
        if nan or inf:
            out.append({**shard, "nan": nan, "inf": inf, "label": _label(shard)})
    return out


def _label(shard: dict[str, Any]) -> str:
    """`rank 1's shard [8:16, 0:4] (__1_0.distcp)`: what evidence lines show."""
    where = ", ".join(f"{o}:{o + n}" for o, n in zip(shard["offsets"], shard["sizes"]))
    owner = f"rank {shard['rank']}'s shard" if shard.get("rank") is not None else "the shard"
    return f"{owner} [{where}]" + (f" ({shard['file']})" if shard.get("file") else "")
