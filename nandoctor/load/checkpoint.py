"""Read checkpoints without trusting them: what is in the file, found by structure.

Formats: torch.save files (a bare state_dict or a training dict), PyTorch Lightning .ckpt,
.safetensors, Hugging Face model folders (safetensors or .bin, sharded via *.index.json) and
torch.distributed.checkpoint folders. Tensors are loaded lazily (memory-mapped torch files,
safetensors' safe_open, per-key DCP reads), so a checkpoint larger than RAM can be walked
one tensor at a time. Nothing is ever written back.
"""
from __future__ import annotations

import errno
import json
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from ..errors import InputError
from ..trace.text import plain_text
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


def _is_training_dict(obj: Mapping) -> bool:
    """A dict that holds a model state_dict (or optimizer/scaler state) next to counters such as
    `step`: `{"model": sd, "step": torch.tensor(100)}` must not pass for a bare state_dict just
    because its counter is a (0-dim) tensor."""
    return any(isinstance(v, Mapping) and (_is_state_dict(v) or _is_optimizer_state(v) or _is_scaler_state(v))
               for v in obj.values())


def _is_optimizer_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state"), Mapping) \
        and isinstance(obj.get("param_groups"), (list, tuple)) and all(isinstance(g, Mapping) for g in obj["param_groups"]) \
        and all(isinstance(s, Mapping) for s in obj["state"].values())


def _is_scaler_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "scale" in obj and "_growth_tracker" in obj and all(isinstance(k, str) for k in obj)


def _as_int(path: Path, key: str, value: Any) -> Optional[int]:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        raise InputError(f"{path}: its '{key}' counter is {value}, not a step count; the file is corrupt or was "
                         "saved from a run whose counter itself went non-finite.")
    return int(value)


def _from_object(path: Path, fmt: str, obj: Any) -> Checkpoint:
    ckpt = Checkpoint(path=path, format=fmt)
    if _is_state_dict(obj) and not _is_training_dict(obj):
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
            ckpt.step = _as_int(path, str(key), value)
        elif key in EPOCH_KEYS and ckpt.epoch is None:
            ckpt.epoch = _as_int(path, str(key), value)
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
            out.append(LazyTensor(name=plain_text(str(name), 300), load=(lambda v=value: v), shape=list(value.shape),
                                  dtype=str(value.dtype).replace("torch.", "")))
    return out


# ---- formats ---------------------------------------------------------------------------------

def _check_zip(path: Path) -> None:
    """torch memory-maps tensor bytes straight from the zip, so a member that was re-compressed
    (deflate) would be read as garbage, and a flipped byte as a plausible NaN. Refuse both as
    corrupt files here: the integrity check streams the file once, holding 1 MiB at a time."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
            if packed:
                raise InputError(f"{path} is a torch.save zip whose members were re-compressed "
                                 f"({packed[0]}{' ...' if len(packed) > 1 else ''} is not stored uncompressed), so torch "
                                 "cannot read its tensors directly. Re-create it without compression (e.g. load it with "
                                 "torch.load in the environment that wrote it and torch.save it again).")
            for member in members:
                if member.CRC == 0 and member.file_size:    # torch.save with CRC32 writing disabled
                    continue
                with archive.open(member) as stream:
                    while stream.read(1 << 20):
                        pass
    except InputError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        text = _first_line(err)
        if "CRC" in text or "Bad magic" in text or "Bad CRC" in text:
            raise InputError(f"{path} is corrupt: {text} (the bytes on disk are not the bytes that were saved; the "
                             "file was damaged after saving, so its values say nothing about training).") from None
        raise InputError(f"{path} is truncated or corrupt ({text}); it cannot be read.") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _torch_load(path: Path, trust: bool) -> Any:
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes): the save was interrupted or the file was truncated.")
    with open(path, "rb") as handle:
        head = handle.read(4)
    mmap = zipfile.is_zipfile(path)   # mmap needs the zip format torch.save writes since 1.6
    if not mmap:
        if head[:2] == b"PK":          # a zip without its central directory: the end of the file is missing
            raise InputError(f"{path} is truncated: it starts like a torch.save zip but its end (the zip's central "
                             "directory) is missing; the save was interrupted or the copy is incomplete.")
        if head[:1] != b"\x80":       # neither torch.save's zip format nor a legacy pickle
            raise InputError(f"{path} is not a readable torch checkpoint: it is neither a torch.save file (zip) nor a "
                             "legacy pickle, .safetensors, or a checkpoint folder.")
    else:
        _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        if not trust and ("weights_only" in str(err).lower() or "unsupported global" in str(err).lower()):
            raise InputError(
                f"{path} needs arbitrary unpickling to load (it stores objects other than tensors and plain "
                f"containers: {str(err).splitlines()[-1][:200] if str(err) else 'unknown'}). nandoctor never executes "
                "code from a checkpoint by default; if you trust this file, pass --trust.") from None
        raise InputError(f"{path} is not a readable torch checkpoint: {_first_line(err)}.") from None
    except Exception as err:  # noqa: BLE001 - torch.load, zipfile and pickle raise nearly any type on broken bytes
        text = _first_line(err)
        if isinstance(err, EOFError) or "truncat" in text.lower() or "ran out of input" in text.lower():
            raise InputError(f"{path} is truncated ({text}): the save was interrupted or the copy is incomplete.") from None
        if "central directory" in text or isinstance(err, zipfile.BadZipFile) or "corrupt" in text.lower():
            raise InputError(f"{path} is truncated or corrupt ({text}); it cannot be read.") from None
        raise InputError(f"{path} is not a readable torch checkpoint: {type(err).__name__}: {text}.") from None


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
        raise InputError(f"{path} is not a valid .safetensors file ({_first_line(err)}).") from None
    def loader(key: str) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            try:
                return handle.get_tensor(key)
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
                raise InputError(f"{path}: tensor {key} cannot be read ({_first_line(err)}).") from None
        return load

    out = []
    try:
        for key in keys:
            out.append(LazyTensor(name=plain_text(key, 300), load=loader(key), shape=list(handle.get_slice(key).get_shape())))
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path} is not a valid .safetensors file ({_first_line(err)}).") from None
    return out


def _hf_folder(path: Path, trust: bool) -> Checkpoint:
    ckpt = Checkpoint(path=path, format="huggingface")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                document = json.loads(index.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise InputError(f"{index} is not a valid shard index ({_first_line(err)}).") from None
            weight_map = document.get("weight_map") if isinstance(document, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise InputError(f"{index} is not a valid shard index: it must be a JSON object whose 'weight_map' "
                                 "maps tensor names to shard file names.")
            for shard in sorted(set(weight_map.values())):
                shard_path = path / shard
                if Path(shard).is_absolute() or ".." in Path(shard).parts:
                    raise InputError(f"{index} names shard {shard!r}, which is outside {path}.")
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


# The globals a torch.distributed.checkpoint `.metadata` pickle may name: torch's own metadata
# dataclasses and the few plain torch/pathlib values they hold (the idea of weights_only).
_DCP_MODULES = ("torch.distributed.checkpoint.metadata",)
_DCP_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
                ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata naming only the allowed globals; anything else is refused before it is
    imported or called, so a payload planted in `.metadata` never runs."""

    def find_class(self, module: str, name: str) -> Any:
        import importlib
        if (module, name) in _DCP_GLOBALS or (module in _DCP_MODULES and not name.startswith("__")):
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise _UnsafeMetadata(f"{module}.{name}")


class _UnsafeMetadata(pickle.UnpicklingError):
    pass


def _safe_reader(path: Path) -> Any:
    """A FileSystemReader whose metadata is read with _MetadataUnpickler (torch uses plain pickle)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(path / ".metadata", "rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))


def _dcp_errors() -> tuple[type[BaseException], ...]:
    """torch.distributed.checkpoint reports failures as CheckpointException, a BaseException."""
    try:
        from torch.distributed.checkpoint.api import CheckpointException
        return (Exception, CheckpointException)
    except ImportError:  # pragma: no cover - older torch
        return (Exception,)


def _dcp_folder(path: Path, trust: bool) -> Checkpoint:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
    try:
        reader = dcp.FileSystemReader(str(path)) if trust else _safe_reader(path)
        metadata = reader.read_metadata()
    except _UnsafeMetadata as err:
        raise InputError(f"{path}/.metadata needs arbitrary unpickling to load (it names {err}, which is not one of "
                         "torch.distributed.checkpoint's metadata types). nandoctor never executes code from a "
                         "checkpoint by default; if you trust this folder, pass --trust.") from None
    except _dcp_errors() as err:
        raise InputError(f"{path} looks like a torch.distributed.checkpoint folder but its metadata cannot be read "
                         f"({type(err).__name__}: {_first_line(err)}).") from None
    if not isinstance(metadata, Metadata) or not isinstance(getattr(metadata, "state_dict_metadata", None), dict):
        raise InputError(f"{path}/.metadata does not hold torch.distributed.checkpoint metadata "
                         f"(it holds a {type(metadata).__name__}).")
    ckpt = Checkpoint(path=path, format="torch.distributed.checkpoint")

    def loader(key: str, meta: TensorStorageMetadata) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            try:
                target = {key: torch.empty(meta.size, dtype=meta.properties.dtype)}
                dcp.load(target, storage_reader=dcp.FileSystemReader(str(path)) if trust else _safe_reader(path),
                         no_dist=True)
            except InputError:
                raise
            except _dcp_errors() as err:
                raise InputError(f"{path}: tensor {key} cannot be read from its data file "
                                 f"({type(err).__name__}: {_first_line(err)}); a data file is missing, truncated or "
                                 "corrupt.") from None
            return target[key]
        return load

    for key, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata):
            continue
        lazy = LazyTensor(name=plain_text(key, 300), load=loader(key, meta), shape=list(meta.size),
                          dtype=str(meta.properties.dtype).replace("torch.", ""),
                          shards=shard_locations(metadata, key))
        head = key.split(".", 1)[0]
        if head in ("optim", "optimizer", "optimizer_state", "optim_state"):
            ckpt.optimizer_tensors.append(lazy)
        else:
            lazy.name = plain_text(key.split(".", 1)[1] if head in MODEL_KEYS and "." in key else key, 300)
            ckpt.tensors.append(lazy)
    return ckpt


def read_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Open a checkpoint of any supported format; InputError (exit 2) for anything unusable."""
    path = Path(path)
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(f"checkpoint {path} is a symbolic link to {os.readlink(path)}, which does not exist.") from None
        raise InputError(f"checkpoint {path} does not exist.") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"checkpoint {path} is a symbolic link loop (it never reaches a file).") from None
        raise InputError(f"checkpoint {path} cannot be read: {err.strerror or err}.") from None
    try:
        if path.is_dir():
            if (path / ".metadata").is_file():
                return _dcp_folder(path, trust)
            return _hf_folder(path, trust)
        if path.suffix == ".safetensors":
            return Checkpoint(path=path, format="safetensors", tensors=_safetensors(path))
        fmt = "lightning" if path.suffix == ".ckpt" else "torch"
        return _from_object(path, fmt, _torch_load(path, trust))
    except PermissionError:
        raise InputError(f"checkpoint {path} cannot be read: permission denied.") from None
    except IsADirectoryError:
        raise InputError(f"checkpoint {path} is a directory nandoctor cannot read.") from None
    except OSError as err:
        raise InputError(f"checkpoint {path} cannot be read: {err.strerror or err}.") from None


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
