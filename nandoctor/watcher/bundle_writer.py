"""Write a crash bundle (format: nandoctor/load/bundle.py): tensors as safetensors, the rest as JSON.

Only called once a check has fired, so it may synchronise and copy; it never runs on the
normal path.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .._version import __version__
from ..load.bundle import (BATCH_FILE, MANIFEST_NAME, MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, BundleManifest)
from ..trace import encode_float


# ---- plain values ---------------------------------------------------------------------------

def encode_value(value: Any) -> Any:
    """A JSON-safe copy of optimizer/scheduler settings; 0-d tensors and tuples are tagged so they
    come back as they were (decode_value in load/bundle.py)."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return {"__tensor__": encode_float(float(value.detach().cpu().reshape(()))),
                    "dtype": str(value.dtype).replace("torch.", "")}
        raise TypeError("a tensor of more than one element")
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, float):
        return encode_float(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"{type(value).__name__} is not plain data")


def encode_structure(obj: Any, leaves: dict[str, torch.Tensor], prefix: str, depth: int = 0) -> dict[str, Any]:
    """The structure of a batch as JSON; its tensors go into `leaves` under "<prefix><n>"."""
    from collections.abc import Mapping
    if isinstance(obj, torch.Tensor):
        key = str(len([k for k in leaves if k.startswith(prefix)]))
        leaves[prefix + key] = obj.detach()
        return {"type": "tensor", "key": key}
    if depth > 8:
        return {"type": "unsupported", "repr": repr(obj)[:200]}
    if isinstance(obj, Mapping):
        return {"type": "dict", "items": {str(k): encode_structure(v, leaves, prefix, depth + 1) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"type": "tuple" if isinstance(obj, tuple) else "list",
                "items": [encode_structure(v, leaves, prefix, depth + 1) for v in obj]}
    if obj is None:
        return {"type": "none"}
    if isinstance(obj, (bool, int, float, str)):
        return {"type": "value", "value": encode_float(obj) if isinstance(obj, float) else obj}
    return {"type": "unsupported", "class": type(obj).__qualname__, "repr": repr(obj)[:200]}


# ---- tensors --------------------------------------------------------------------------------

def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr())


def dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory (tied embeddings): keep one copy of each
    identical view and record the others as aliases; other views of a shared storage are cloned."""
    views: dict[tuple, str] = {}
    storages: dict[tuple, int] = {}
    for t in state.values():
        if t.numel():
            storages[_storage_key(t)] = storages.get(_storage_key(t), 0) + 1
    out: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, t in state.items():
        t = t.detach()
        if t.numel() == 0:
            out[name] = t.cpu().contiguous()
            continue
        view = (*_storage_key(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            tied[name] = views[view]
            continue
        views[view] = name
        shared = storages[_storage_key(t)] > 1
        partial = t.untyped_storage().nbytes() != t.numel() * t.element_size()
        if t.device.type == "cpu":
            out[name] = t.clone() if (shared or partial or not t.is_contiguous()) else t
        else:
            out[name] = t.to("cpu", copy=True).contiguous()
    return out, tied


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return {"bytes": path.stat().st_size, "tensors": len(tensors)}


def optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """optimizer.state_dict() split into tensors (by "<index>/<key>") and JSON (groups, scalars)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):      # Adam's 0-d "step" counter included
                tensors[f"{index}/{key}"] = value.detach()
            else:
                scalars.setdefault(str(index), {})[key] = _encode_storing_tensors(value, tensors, f"{index}/{key}")
    groups = []
    for group in sd["param_groups"]:
        plain = {}
        for key, value in group.items():
            try:
                plain[key] = encode_value(value)
            except TypeError:
                plain[key] = None        # e.g. a callable in a custom group: not stored
        groups.append(plain)
    return tensors, {"class": f"{type(optimizer).__module__}:{type(optimizer).__qualname__}",
                     "param_groups": groups, "scalars": scalars}


def _encode_storing_tensors(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """A state value that holds tensors in lists (LBFGS's `old_dirs`, `old_stps`, `ro`, `al`):
    each tensor goes into the optimizer file as "<index>/<key>/<i>..." and the JSON names it
    (load/bundle.py's decode_value puts it back)."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach()
        return {"__stored__": name}
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, list, tuple)) for v in value):
        items = [_encode_storing_tensors(v, tensors, f"{name}/{i}") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    return encode_value(value)


def scheduler_part(scheduler: Any) -> Optional[dict[str, Any]]:
    if scheduler is None:
        return None
    cls = f"{type(scheduler).__module__}:{type(scheduler).__qualname__}"
    try:
        state = encode_value(scheduler.state_dict())
        json.dumps(state)
    except (TypeError, ValueError, AttributeError):
        return {"class": cls, "state": None, "note": "its state_dict() is not plain data; not stored"}
    return {"class": cls, "state": state}


def capture_rng() -> dict[str, Any]:
    """Every generator's state, cheap enough to take at every step boundary (a few KiB)."""
    # (torch.get_rng_state() is this call behind one more Python frame)
    state: dict[str, Any] = {"cpu": torch.default_generator.get_state(), "python": _python_state()}
    # is_initialized() first: a process that never touched CUDA has no CUDA generator in use.
    if torch.cuda.is_initialized() and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    # Only once something imported numpy.random: torch imports numpy but not its generators, and a
    # generator imported later starts from fresh OS entropy, which no capture could replay anyway
    # (importing it here cost every run ~6 ms and ~3 MB).
    if numpy is not None and "numpy.random" in sys.modules:
        state["numpy"] = _numpy_state(numpy)
    return state


# numpy's global generator state as `numpy.random.get_state()` gave it last, and the raw words
# of its MT19937 state then. get_state() builds a tuple around a copy of 624 words (30-100 us,
# as much as the rest of a small model's per-step checks); most loops never draw from numpy's
# global generator between two steps, and a 2.5 KB compare through numpy's public ctypes view of
# the state tells so in ~2 us.
_numpy_cache: dict[str, Any] = {}


_MT19937_BYTES = 624 * 4 + 4          # uint32 key[624]; int pos (numpy/random/src/mt19937)


def _bytes_view(address: int, size: int) -> Any:
    """A ctypes char array over `size` bytes at `address`, made once per generator object (the
    cache holds the object, so the address stays valid): its `.raw` copies the bytes without a
    foreign-function call (ctypes.string_at goes through libffi, ~10 us in a real step, cold)."""
    import ctypes
    return (ctypes.c_char * size).from_address(address)


# Python's global generator, the same way: random.getstate() builds a tuple of 625 new ints
# (~15 us in a real step). CPython's generator object is its header, then `int index` and
# `uint32_t state[624]` (Modules/_randommodule.c); those bytes are compared with the last
# capture's, read in place. The layout is checked against getstate() once per generator object,
# and only read when the type's own size covers it: any other layout, or another Python, keeps
# calling getstate() every time.
_random_cache: dict[str, Any] = {}
_RANDOM_OFFSET = object.__basicsize__
_RANDOM_BYTES = 4 + 624 * 4


def _python_state() -> Any:
    # The instance the module's functions are bound to (what random.getstate() reads).
    generator = getattr(random.getstate, "__self__", None)
    cache = _random_cache
    if generator is None or cache.get("generator") is not generator:
        cache.clear()
        readable = generator is not None and _random_layout_matches(generator)
        cache.update(generator=generator, readable=readable,
                     view=_bytes_view(id(generator) + _RANDOM_OFFSET, _RANDOM_BYTES) if readable else None)
    if not cache["readable"]:
        return random.getstate()
    raw = cache["view"].raw
    gauss = generator.gauss_next
    if "state" in cache and raw == cache["raw"] and gauss == cache["gauss"]:
        return cache["state"]
    state = random.getstate()
    cache.update(raw=raw, gauss=gauss, state=state)
    return state


def _random_layout_matches(generator: Any) -> bool:
    import struct
    base = next((t for t in type(generator).__mro__ if t.__module__ == "_random"), None)
    if sys.implementation.name != "cpython" or base is None or base.__basicsize__ < _RANDOM_OFFSET + _RANDOM_BYTES:
        return False
    try:
        version, internal, _ = generator.getstate()
        raw = _bytes_view(id(generator) + _RANDOM_OFFSET, _RANDOM_BYTES).raw
        index, *words = struct.unpack(f"=i{624}I", raw)
    except (TypeError, ValueError, struct.error):
        return False
    return len(internal) == 625 and list(internal[:624]) == words and internal[624] == index


def _numpy_state(numpy: Any) -> Any:
    raw = None
    try:
        bit_generator = numpy.random.mtrand._rand._bit_generator
        if bit_generator is not _numpy_cache.get("generator"):
            # The address of its state, once per generator object (np.random.seed reseeds in
            # place; np.random.set_state too): looking it up through `.ctypes` each step cost
            # as much as the compare itself.
            view = None
            if type(bit_generator).__name__ == "MT19937":
                view = _bytes_view(bit_generator.ctypes.state_address, _MT19937_BYTES)
            _numpy_cache.clear()
            _numpy_cache.update(generator=bit_generator, view=view)
        view = _numpy_cache["view"]
        if view is not None:
            raw = view.raw
    except (AttributeError, TypeError, ValueError):
        raw = None
    # A cached Gaussian (has_gauss) is consumed without moving the words: reuse only without one.
    cached = _numpy_cache.get("state")
    if raw is not None and cached is not None and raw == _numpy_cache.get("raw") and not cached[3]:
        return cached
    state = numpy.random.get_state()
    _numpy_cache.update(state=state, raw=raw)
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put every generator back where `capture_rng()` found it."""
    torch.set_rng_state(state["cpu"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in state:
        numpy.random.set_state(state["numpy"])


def rng_parts(rng: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    version, words, gauss_next = rng["python"]
    tensors = {"cpu": rng["cpu"], "python": torch.tensor(list(words), dtype=torch.int64)}
    for i, s in enumerate(rng.get("cuda", [])):
        tensors[f"cuda:{i}"] = s
    plain: dict[str, Any] = {"python": {"version": version, "gauss_next": gauss_next},
                             "cuda_devices": len(rng.get("cuda", []))}
    if "numpy" in rng:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        tensors["numpy"] = torch.from_numpy(keys.astype("int64"))
        plain["numpy"] = {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return tensors, plain


# ---- the bundle -----------------------------------------------------------------------------

def versions() -> dict[str, str]:
    out = {"nandoctor": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("lightning", "transformers", "numpy"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            out[name] = str(module.__version__)
    return out


def bundle_folder(out: str | os.PathLike, step: int) -> Path:
    root = Path(out)
    folder = root / f"step-{step:06d}"
    n = 1
    while folder.exists():
        folder = root / f"step-{step:06d}-{n}"
        n += 1
    return folder


def write_bundle(out: str | os.PathLike, manifest: BundleManifest, model_state: dict[str, torch.Tensor],
                 optimizer: Optional[torch.optim.Optimizer], micro_batches: list[Any],
                 rng: Optional[dict[str, Any]], param_names: Optional[list[Optional[str]]] = None) -> Path:
    """Write the bundle folder atomically (a partial folder is renamed when complete)."""
    began = time.perf_counter()
    folder = bundle_folder(out, manifest.step)
    partial = folder.with_name("." + folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        weights, manifest.tied = dedupe_tied(model_state)
        manifest.files[MODEL_FILE] = _save(partial / MODEL_FILE, weights)
        if optimizer is not None:
            tensors, manifest.optimizer = optimizer_parts(optimizer)
            manifest.optimizer["param_names"] = list(param_names or [])
            if tensors:
                tensors, _ = dedupe_tied(tensors)
                manifest.files[OPTIMIZER_FILE] = _save(partial / OPTIMIZER_FILE, tensors)
        leaves: dict[str, torch.Tensor] = {}
        manifest.batch = [encode_structure(b, leaves, f"{i}/") for i, b in enumerate(micro_batches)]
        manifest.micro_batches = len(micro_batches)
        if leaves:
            leaves, tied = dedupe_tied(leaves)
            # One tensor in two places of a step (the DataLoader's batch and the model's input):
            # the reader looks up every key, so each place gets its own copy.
            for alias, canonical in tied.items():
                leaves[alias] = leaves[canonical].clone()
            manifest.files[BATCH_FILE] = _save(partial / BATCH_FILE, leaves)
        if rng is not None:
            tensors, manifest.rng = rng_parts(rng)
            manifest.files[RNG_FILE] = _save(partial / RNG_FILE, tensors)
        manifest.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        manifest.versions = versions()
        manifest.size_bytes = sum(f["bytes"] for f in manifest.files.values())
        manifest.write_seconds = round(time.perf_counter() - began, 4)
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=1), encoding="utf-8")
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
