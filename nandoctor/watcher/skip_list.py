"""`skip_list.json`: every step a policy skipped or rolled back, and the samples to leave out on resume.

The watch appends one entry per intervention to `skip_list.json` in its output folder (rank 0
writes it under torchrun, with every rank's samples); `SkipListSampler` reads it back so a resumed
run never draws those samples again. The file is rewritten whole at each append (tmp + rename):
a run killed mid-write leaves the previous list, never half a JSON document.

An entry:
    {"step": 41, "policy": "rollback", "reason": "the loss is NaN", "samples": [118, 119],
     "window": {"from_step": 32, "to_step": 41}, "blame": {...}, "rank_samples": {"0": [...], "1": [...]}}
`samples` are dataset indices (what the DataLoader's sampler yielded); `window` is the span of
steps whose updates a rollback undid.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import torch

SKIP_LIST_NAME = "skip_list.json"
FORMAT_VERSION = 1


def skip_list_path(where: Union[str, Path]) -> Path:
    """The skip list of an output folder, or the file itself."""
    path = Path(where)
    return path / SKIP_LIST_NAME if path.is_dir() or path.suffix != ".json" else path


def read_skip_list(where: Union[str, Path]) -> list[dict[str, Any]]:
    """The entries of a skip list (a folder holding skip_list.json, or the file); [] when absent."""
    path = skip_list_path(where)
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"nandoctor: cannot read the skip list {path} ({err}); it should be the JSON file a "
                         "watch with on_nonfinite/on_spike='skip' or 'rollback' wrote. Delete it to start "
                         "without one.") from None
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"nandoctor: {path} is not a skip list (no 'entries' list); it should be the JSON file a "
                         "watch with on_nonfinite/on_spike='skip' or 'rollback' wrote.")
    return entries


def skipped_samples(where: Union[str, Path, Iterable[int], None]) -> set[int]:
    """Dataset indices a skip list names (a path), or the indices themselves (an iterable)."""
    if where is None:
        return set()
    if isinstance(where, (str, Path)):
        return {int(i) for entry in read_skip_list(where) for i in entry.get("samples") or []}
    return {int(i) for i in where}


class SkipList:
    """Appends entries to `folder/skip_list.json` (read back with `read_skip_list`)."""

    def __init__(self, folder: Union[str, Path]):
        self.path = Path(folder) / SKIP_LIST_NAME
        self.entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any], write: bool = True) -> None:
        self.entries.append(entry)
        if not write:
            return
        existing = read_skip_list(self.path) if self.path.exists() else []
        # A resumed run appends to the list of the run before it.
        existing.append(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, "entries": existing}, indent=1) + "\n")
        os.replace(tmp, self.path)


class SkipListSampler(torch.utils.data.Sampler):
    """A sampler that yields what `sampler` yields, less the samples a skip list names.

    `skip_list`: a skip_list.json (or the folder holding it) written by a watch, or an iterable of
    dataset indices. `sampler` may be any sampler (RandomSampler, DistributedSampler, ...) or an
    iterable of indices; `set_epoch` is passed on. Use it on resume:
    `DataLoader(ds, sampler=nandoctor.SkipListSampler(RandomSampler(ds), "nandoctor-bundles"))`.
    """

    def __init__(self, sampler: Any, skip_list: Union[str, Path, Iterable[int], None]):
        self.sampler = sampler
        self.skipped = skipped_samples(skip_list)

    def __iter__(self) -> Iterator[int]:
        skipped = self.skipped
        for index in self.sampler:
            if int(index) not in skipped:
                yield index

    def __len__(self) -> int:
        source = getattr(self.sampler, "data_source", None)
        if source is not None and type(self.sampler).__name__ in ("SequentialSampler", "RandomSampler") \
                and getattr(self.sampler, "replacement", False) is False:
            # Both cover every index of their data source once: count without drawing (a RandomSampler
            # with no generator would consume the global RNG).
            size = len(source)
            return len(self.sampler) - sum(1 for i in self.skipped if 0 <= i < size)
        return sum(1 for i in self.sampler if int(i) not in self.skipped)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

