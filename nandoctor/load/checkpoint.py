"""Read checkpoints without trusting them: what is in the file, found by structure.

Formats: torch.save files (a bare state_dict or a training dict), PyTorch Lightning .ckpt,
.safetensors, Hugging Face model folders (safetensors or .bin, sharded via *.index.json) and
torch.distributed.checkpoint folders. Tensors are loaded lazily (memory-mapped torch files,
safetensors' safe_open, per-key DCP reads), so a checkpoint larger than RAM can be walked
one tensor at a time. Nothing is ever written back.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ..errors import InputError
from .dcp_shards import shard_locations

MODEL_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "module", "net", "network", "weights",
              "params", "model_state_dict_ema")
STEP_KEYS = ("step", "global_step", "iteration", "iter", "steps", "num_updates", "update")
EPOCH_KEYS = ("epoch", "epochs")


@dataclass
class LazyTensor:
    name: str
    load: Callable[[], torch.Tensor]
    shape: Optional[list[int]] = None
    dtype: Optional[str] = None
    shards: list[dict[str, Any]] = field(default_factory=list)   # DCP: rank, file, offsets, sizes (dcp_shards.py)


@dataclass
class Checkpoint:
    path: Path
    format: str
    tensors: list[LazyTensor] = field(default_factory=list)       # model parameters and buffers
    optimizer: list[dict[str, Any]] = field(default_factory=list)  # optimizer state_dicts (Lightning may hold several)
    optimizer_tensors: list[LazyTensor] = field(default_factory=list)  # DCP: flattened optimizer tensors
    scaler: Optional[dict[str, Any]] = None
    step: Optional[int] = None
    epoch: Optional[int] = None
    other_keys: list[str] = field(default_factory=list)

    def model_state(self) -> dict[str, torch.Tensor]:
        return {t.name: t.load() for t in self.tensors}


# ---- structure -------------------------------------------------------------------------------

def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(k, str) for k in obj) \
        and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def _is_optimizer_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "state" in obj and "param_groups" in obj


def _is_scaler_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "scale" in obj and "_growth_tracker" in obj


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _from_object(path: Path, fmt: str, obj: Any) -> Checkpoint:
    ckpt = Checkpoint(path=path, format=fmt)
    if _is_state_dict(obj) and not any(_is_optimizer_state(v) for v in obj.values()):
        ckpt.tensors = _lazy_from_mapping(obj)
        return ckpt
    if not isinstance(obj, Mapping):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state_dict or a training dict; nandoctor "
                         "reads checkpoints saved from model.state_dict() or a dict that contains one.")
    model = None
    for key in MODEL_KEYS:
        if _is_state_dict(obj.get(key)):
            model = obj[key]
            break
    if model is None:   # found by structure: the largest mapping of tensors
        candidates = [v for v in obj.values() if _is_state_dict(v) and not _is_optimizer_state(v)]
        model = max(candidates, key=len) if candidates else None
    if model is not None:
        ckpt.tensors = _lazy_from_mapping(model)
    for key, value in obj.items():
        if _is_optimizer_state(value):
            ckpt.optimizer.append(value)
        elif isinstance(value, (list, tuple)) and value and all(_is_optimizer_state(v) for v in value):
            ckpt.optimizer.extend(value)          # Lightning: optimizer_states
        elif _is_scaler_state(value):
            ckpt.scaler = dict(value)
        elif key in STEP_KEYS and ckpt.step is None:
            ckpt.step = _as_int(value)
        elif key in EPOCH_KEYS and ckpt.epoch is None:
            ckpt.epoch = _as_int(value)
        elif value is not model:
            ckpt.other_keys.append(str(key))
    if "global_step" in obj:
        ckpt.format = "lightning" if "optimizer_states" in obj or "pytorch-lightning_version" in obj else ckpt.format
    if model is None and not ckpt.optimizer:
        raise InputError(f"{path} holds a dict with keys {', '.join(map(str, list(obj)[:12]))} but no model state_dict "
                         "(a mapping of parameter names to tensors) was found in it.")
    return ckpt


def _lazy_from_mapping(mapping: Mapping) -> list[LazyTensor]:
    out = []
    for name, value in mapping.items():
        if isinstance(value, torch.Tensor):
            out.append(LazyTensor(name=str(name), load=(lambda v=value: v), shape=list(value.shape),
                                  dtype=str(value.dtype).replace("torch.", "")))
    return out


# ---- formats ---------------------------------------------------------------------------------

def _torch_load(path: Path, trust: bool) -> Any:
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes): the save was interrupted or the file was truncated.")
    mmap = zipfile.is_zipfile(path)   # mmap needs the zip format torch.save writes since 1.6
    if not mmap:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head[:1] != b"\x80":       # neither torch.save's zip format nor a legacy pickle
            raise InputError(f"{path} is not a readable torch checkpoint: it is neither a torch.save file (zip) nor a "
                             "legacy pickle, .safetensors, or a checkpoint folder.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not trust and ("weights_only" in str(err).lower() or "unsupported global" in str(err).lower()):
            raise InputError(
                f"{path} needs arbitrary unpickling to load (it stores objects other than tensors and plain "
                f"containers: {str(err).splitlines()[-1][:200] if str(err) else 'unknown'}). nandoctor never executes "
                "code from a checkpoint by default; if you trust this file, pass --trust.") from None
        raise InputError(f"{path} is not a readable torch checkpoint: {str(err).splitlines()[0][:200]}.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError) as err:
        text = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if "central directory" in text or isinstance(err, (EOFError, zipfile.BadZipFile)) or "corrupt" in text.lower():
            raise InputError(f"{path} is truncated or corrupt ({text}); it cannot be read.") from None
        raise InputError(f"{path} is not a readable torch checkpoint: {text}.") from None


def _safetensors(path: Path) -> list[LazyTensor]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise InputError(f"{path} is a .safetensors file: install the safetensors package to read it "
                         "(pip install 'nandoctor[postmortem]').") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes).")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise InputError(f"{path} is not a valid .safetensors file ({str(err)[:200]}).") from None
    out = []
    for key in keys:
        out.append(LazyTensor(name=key, load=(lambda k=key, h=handle: h.get_tensor(k)),
                              shape=list(handle.get_slice(key).get_shape())))
    return out


def _hf_folder(path: Path, trust: bool) -> Checkpoint:
    ckpt = Checkpoint(path=path, format="huggingface")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as err:
                raise InputError(f"{index} is not a valid shard index ({err}).") from None
            for shard in sorted(set(weight_map.values())):
                shard_path = path / shard
                if not shard_path.is_file():
                    raise InputError(f"{index} names shard {shard}, which is missing from {path}.")
                if shard.endswith(".safetensors"):
                    ckpt.tensors += _safetensors(shard_path)
                else:
                    ckpt.tensors += _from_object(shard_path, "torch", _torch_load(shard_path, trust)).tensors
            return ckpt
    if (path / "model.safetensors").is_file():
        ckpt.tensors = _safetensors(path / "model.safetensors")
        return ckpt
    if (path / "pytorch_model.bin").is_file():
        ckpt.tensors = _from_object(path / "pytorch_model.bin", "torch", _torch_load(path / "pytorch_model.bin", trust)).tensors
        return ckpt
    raise InputError(f"{path} is a folder but neither a Hugging Face model folder (model.safetensors, pytorch_model.bin, "
                     "*.index.json) nor a torch.distributed.checkpoint folder (.metadata).")


def _dcp_folder(path: Path) -> Checkpoint:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    try:
        reader = dcp.FileSystemReader(str(path))
        metadata = reader.read_metadata()
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path} looks like a torch.distributed.checkpoint folder but its metadata cannot be read "
                         f"({str(err)[:200]}).") from None
    ckpt = Checkpoint(path=path, format="torch.distributed.checkpoint")

    def loader(key: str, meta: TensorStorageMetadata) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            target = {key: torch.empty(meta.size, dtype=meta.properties.dtype)}
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
            return target[key]
        return load

    for key, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata):
            continue
        lazy = LazyTensor(name=key, load=loader(key, meta), shape=list(meta.size),
                          dtype=str(meta.properties.dtype).replace("torch.", ""),
                          shards=shard_locations(metadata, key))
        head = key.split(".", 1)[0]
        if head in ("optim", "optimizer", "optimizer_state", "optim_state"):
            ckpt.optimizer_tensors.append(lazy)
        else:
            lazy.name = key.split(".", 1)[1] if head in MODEL_KEYS and "." in key else key
            ckpt.tensors.append(lazy)
    return ckpt


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Open a checkpoint of any supported format; InputError (exit 2) for anything unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist.")
    try:
        if path.is_dir():
            if (path / ".metadata").is_file():
                return _dcp_folder(path)
            return _hf_folder(path, trust)
        if path.suffix == ".safetensors":
            return Checkpoint(path=path, format="safetensors", tensors=_safetensors(path))
        fmt = "lightning" if path.suffix == ".ckpt" else "torch"
        return _from_object(path, fmt, _torch_load(path, trust))
    except PermissionError:
        raise InputError(f"checkpoint {path} cannot be read: permission denied.") from None
    except IsADirectoryError:
        raise InputError(f"checkpoint {path} is a directory nandoctor cannot read.") from None


def iter_optimizer_tensors(ckpt: Checkpoint) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(parameter id or name, state key, tensor) for every tensor of the optimizer state."""
    for i, opt in enumerate(ckpt.optimizer):
        prefix = f"opt{i}." if len(ckpt.optimizer) > 1 else ""
        for param_id, state in opt.get("state", {}).items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield f"{prefix}{param_id}", key, value
    for lazy in ckpt.optimizer_tensors:
        parts = lazy.name.split(".")
        yield ".".join(parts[2:-1]) or lazy.name, parts[-1], lazy.load()


def resume_state(path: str | Path, trust: bool = False) -> tuple[Callable[[Any], None], int]:
    """For `scan --checkpoint`: a function that loads the checkpoint into a TrainingSession, and the step to resume at."""
    ckpt = read_checkpoint(path, trust)
    state = ckpt.model_state()

    def apply(session: Any) -> None:
        model = session.model
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing in the checkpoint: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
            if unexpected:
                parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
            if shapes:
                parts.append("shape mismatches: " + "; ".join(shapes[:5]))
            raise InputError(f"checkpoint {path} does not fit the model from build_model(): " + "; ".join(parts) + ".")
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        if ckpt.optimizer and len(ckpt.optimizer) >= 1:
            try:
                session.optimizer.load_state_dict(ckpt.optimizer[0])
            except (ValueError, KeyError, RuntimeError) as err:
                raise InputError(f"checkpoint {path}: its optimizer state does not fit build_optimizer()'s optimizer "
                                 f"({str(err)[:200]}).") from None
        if ckpt.scaler and getattr(session, "scaler", None) is not None and hasattr(session.scaler, "load_state_dict"):
            session.scaler.load_state_dict(ckpt.scaler)

    return apply, int(ckpt.step or 0)
