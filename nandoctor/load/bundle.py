"""The crash bundle: a versioned folder that `nandoctor.watch` writes on the first NaN/Inf and
`nandoctor replay` reads.

Layout (bundle version 1):

    step-000123/
      manifest.json          what happened, versions, settings, history, how to rebuild the model
      model.safetensors      weights and buffers (tied tensors stored once, see manifest "tied")
      optimizer.safetensors  optimizer state tensors, keys "<param index>/<state key>"
      batch.safetensors      tensor leaves of every micro-batch, keys "<micro-batch>/<leaf index>"
      rng.safetensors        "cpu" and "cuda:<i>" generator states (uint8), "python" (the Mersenne
                             Twister words, int64) and "numpy" (its key words, int64)

Reading it executes nothing: only JSON and safetensors (no pickle) are ever parsed, and any
other file a manifest names is refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError

BUNDLE_FORMAT = "nandoctor-crash-bundle"
BUNDLE_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BATCH_FILE = "batch.safetensors"
RNG_FILE = "rng.safetensors"
TENSOR_FILES = (MODEL_FILE, OPTIMIZER_FILE, BATCH_FILE, RNG_FILE)

# Which check fired. "parameters" fires after optimizer.step(); the others before it.
CHECKS = ("batch", "loss", "gradients", "parameters", "loss-scale")
# What the weights in model.safetensors are: the state the failing step started from, or (a
# NaN born inside optimizer.step() without watch(snapshot=True)) the state it left behind.
STATE_BEFORE_STEP = "before-step"
STATE_AFTER_STEP = "after-step"
# plain: a loop of the user's (replay needs --model); lightning, huggingface: rebuilt from the
# class the bundle names; script: `nandoctor run` (or a watch inside a script) saw the script,
# and replay re-runs it (--trust) up to the failing step.
REBUILD_KINDS = ("plain", "lightning", "huggingface", "script")

_SAFE_NAME = re.compile(r"^[a-z_]+\.safetensors$")
# torch.compile's wrapper (OptimizedModule) holds the user's module as `_orig_mod`: names read as
# the user wrote them without that segment (older bundles may still carry it).
COMPILE_WRAPPER_ATTR = "_orig_mod"
# Lightning Fabric's fabric.setup(model) returns a _FabricModule holding the user's module as
# `_forward_module`; its state_dict() already drops that segment, named_modules() and
# named_parameters() keep it, so names are read without it too.
WRAPPER_ATTRS = frozenset({COMPILE_WRAPPER_ATTR, "_forward_module"})


def user_name(name: str) -> str:
    """"_orig_mod.body.0.weight" -> "body.0.weight": a parameter or module path without the
    segments that wrappers (torch.compile, Lightning Fabric) add around the user's module."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_ATTRS)


@dataclass
class BundleManifest:
    """manifest.json. Every field is plain JSON; non-finite floats are "NaN"/"Infinity" strings."""
    step: int                                   # optimizer-step count of the failing step (0-based)
    check: str                                  # one of CHECKS
    what: str                                   # one line: what was non-finite
    state: str = STATE_BEFORE_STEP
    format: str = BUNDLE_FORMAT
    bundle_version: int = BUNDLE_VERSION
    created: str = ""                           # ISO 8601, UTC
    versions: dict[str, str] = field(default_factory=dict)      # nandoctor, torch, python, lightning, transformers
    device: str = "cpu"
    policy: str = "raise"
    micro_batches: int = 1                      # micro-batches of the step (gradient accumulation)
    micro_step: Optional[int] = None            # the micro-batch whose loss/batch fired, when known
    precision: str = "32-true"                  # Lightning name of the precision the run used
    detail: dict[str, Any] = field(default_factory=dict)        # e.g. {"parameters": [...], "tensors": [...]}
    lr: list[Any] = field(default_factory=list)                 # per param group
    grad_clip: Optional[float] = None
    scaler: Optional[dict[str, Any]] = None     # GradScaler.state_dict() (plain numbers)
    optimizer: dict[str, Any] = field(default_factory=dict)     # class, param_groups, param_names, scalars
    scheduler: Optional[dict[str, Any]] = None  # class, state (plain data) or null when not plain data
    batch: list[Any] = field(default_factory=list)              # structure of every micro-batch (see encode)
    rng: dict[str, Any] = field(default_factory=dict)           # python random state, numpy position, devices
    history: list[dict[str, Any]] = field(default_factory=list)  # recent steps: loss, grad_norm, scale, lr, skipped
    layer_stats: list[dict[str, Any]] = field(default_factory=list)  # recent stats steps: per-module numbers
    rebuild: dict[str, Any] = field(default_factory=dict)       # kind + what that kind needs (see README)
    tied: dict[str, str] = field(default_factory=dict)          # state-dict key -> key it shares storage with
    # torch.compile settings of the run: backend, mode, options, module (null: not compiled)
    compile: Optional[dict[str, Any]] = None
    # The execution paths the recorded step took (trace/paths.py): {"version", "sites": [{site,
    # kind, path, device, why, calls}]}: SDPA backend, fast path, optimizer implementation,
    # autocast, device, torch. Null in bundles written before it existed.
    paths: Optional[dict[str, Any]] = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> {bytes, tensors}
    size_bytes: int = 0
    write_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        from ..trace import to_plain
        return to_plain(self)


@dataclass
class Bundle:
    """A validated bundle on disk; tensors are read on demand with safetensors."""
    path: Path
    manifest: BundleManifest

    def tensors(self, name: str) -> dict[str, Any]:
        if name not in self.manifest.files:
            return {}
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(self.path / name))
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"crash bundle {self.path}: {name} is not a readable safetensors file ({err}); "
                             "the bundle is damaged. nandoctor reads bundles only as JSON and safetensors "
                             "and never unpickles them.") from None

    def model_state(self) -> dict[str, Any]:
        state = self.tensors(MODEL_FILE)
        for alias, canonical in self.manifest.tied.items():
            if canonical in state:
                state[alias] = state[canonical]
        return {user_name(key): value for key, value in state.items()}

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The optimizer's state_dict() as torch's load_state_dict expects it."""
        spec = self.manifest.optimizer
        flat = self.tensors(OPTIMIZER_FILE)
        state: dict[int, dict[str, Any]] = {}
        for key, value in flat.items():
            index, _, name = key.partition("/")
            if "/" not in name:         # "<index>/<key>/<i>": an item of a list the scalars name
                state.setdefault(int(index), {})[name] = value
        for index, scalars in spec.get("scalars", {}).items():
            state.setdefault(int(index), {}).update({k: decode_value(v, flat) for k, v in scalars.items()})
        groups = [{k: decode_value(v) for k, v in g.items()} for g in spec.get("param_groups", [])]
        return {"state": state, "param_groups": groups}

    def micro_batches(self) -> list[Any]:
        leaves = self.tensors(BATCH_FILE)
        return [decode_structure(node, leaves, f"{i}/") for i, node in enumerate(self.manifest.batch)]

    def rng_tensors(self) -> dict[str, Any]:
        return self.tensors(RNG_FILE)


# ---- structures of batches: tensor leaves by key, everything else as JSON ---------------------

def decode_value(value: Any, stored: Optional[dict[str, Any]] = None) -> Any:
    """JSON scalars back to Python: non-finite strings to floats, tagged 0-d tensors back to tensors,
    and (with `stored`, the optimizer file's tensors) the tensors a list of optimizer state names."""
    from ..trace import decode_float
    if isinstance(value, dict) and "__tensor__" in value:
        import torch
        return torch.tensor(decode_float(value["__tensor__"]), dtype=getattr(torch, value.get("dtype", "float32")))
    if isinstance(value, dict) and "__stored__" in value and stored is not None:
        if value["__stored__"] not in stored:
            raise InputError(f"crash bundle: optimizer tensor {value['__stored__']} is named in the manifest but "
                             f"missing from {OPTIMIZER_FILE}.")
        return stored[value["__stored__"]]
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(decode_value(v, stored) for v in value["__tuple__"])
    if isinstance(value, list):
        return [decode_value(v, stored) for v in value]
    return decode_float(value)


def decode_structure(node: Any, leaves: dict[str, Any], prefix: str) -> Any:
    if not isinstance(node, dict) or "type" not in node:
        raise InputError(f"crash bundle: a batch structure entry is malformed ({str(node)[:80]}).")
    kind = node["type"]
    if kind == "tensor":
        key = prefix + str(node["key"])
        if key not in leaves:
            raise InputError(f"crash bundle: batch tensor {key} is listed in the manifest but missing from "
                             f"{BATCH_FILE}.")
        return leaves[key]
    if kind == "dict":
        return {k: decode_structure(v, leaves, prefix) for k, v in node["items"].items()}
    if kind in ("list", "tuple"):
        items = [decode_structure(v, leaves, prefix) for v in node["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return decode_value(node["value"])
    if kind == "none":
        return None
    return None     # "unsupported": an object nandoctor did not store (its repr is in the manifest)


# ---- reading ----------------------------------------------------------------------------------

_JSON_TYPES = {"int": (int,), "str": (str,), "float": (int, float), "dict": (dict,), "list": (list,)}


def _base(annotation: str) -> tuple[str, bool]:
    """("dict", optional) for "Optional[dict[str, Any]]" and the like."""
    optional = annotation.startswith("Optional[")
    inner = annotation[len("Optional["):-1] if optional else annotation
    return inner.split("[", 1)[0], optional


def _fits(value: Any, annotation: str) -> bool:
    base, optional = _base(annotation)
    if value is None:
        return optional
    if isinstance(value, bool):          # JSON true/false is no count or size
        return False
    # A non-finite float is stored as the string "NaN"/"Infinity" (see to_plain).
    if base == "float" and isinstance(value, str):
        return value in ("NaN", "Infinity", "-Infinity")
    return isinstance(value, _JSON_TYPES.get(base, (object,)))


def _describe(annotation: str) -> str:
    base, optional = _base(annotation)
    word = {"int": "an integer", "str": "a string", "float": "a number", "dict": "an object", "list": "a list"}.get(base, base)
    return word + (" or null" if optional else "")


def _script_fits(script: Any) -> bool:
    return (isinstance(script, dict) and isinstance(script.get("path"), str) and isinstance(script.get("cwd"), str)
            and isinstance(script.get("argv"), list) and all(isinstance(a, str) for a in script["argv"])
            and (script.get("module") is None or isinstance(script.get("module"), str)))


def read_bundle(path: str | Path) -> Bundle:
    """Validate a bundle folder (or its manifest.json) and return it; InputError on anything off."""
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if not path.exists():
        raise InputError(f"crash bundle {path} does not exist; pass the folder that `nandoctor.watch` wrote "
                         "(it holds manifest.json).")
    if not path.is_dir():
        raise InputError(f"crash bundle {path} is not a folder; a bundle is a folder holding manifest.json and "
                         ".safetensors files, as written by `nandoctor.watch`.")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise InputError(f"crash bundle {path} has no {MANIFEST_NAME}; it is not a nandoctor crash bundle.")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"crash bundle {path}: {MANIFEST_NAME} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise InputError(f"crash bundle {path}: {MANIFEST_NAME} does not declare format {BUNDLE_FORMAT!r}; "
                         "it is not a nandoctor crash bundle.")
    version = data.get("bundle_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"crash bundle {path}: bundle_version {version!r} is not a positive integer.")
    if version > BUNDLE_VERSION:
        raise InputError(f"crash bundle {path} has bundle_version {version}; this nandoctor reads versions up to "
                         f"{BUNDLE_VERSION}. Upgrade nandoctor to replay it.")
    known = {f.name for f in fields(BundleManifest)}
    missing = [k for k in ("step", "check", "what") if k not in data]
    if missing:
        raise InputError(f"crash bundle {path}: {MANIFEST_NAME} lacks {', '.join(missing)}.")
    files = data.get("files", {})
    if not isinstance(files, dict):
        raise InputError(f"crash bundle {path}: 'files' in {MANIFEST_NAME} must be an object.")
    for name in files:
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name not in TENSOR_FILES:
            raise InputError(f"crash bundle {path}: the manifest names the file {name!r}; a bundle holds only "
                             f"{', '.join(TENSOR_FILES)}. nandoctor reads bundles only as JSON and safetensors and "
                             "never unpickles or executes anything from them.")
        if not (path / name).is_file():
            raise InputError(f"crash bundle {path}: {name} is listed in the manifest but missing.")
    if not isinstance(data.get("step"), int) or data.get("check") not in CHECKS:
        raise InputError(f"crash bundle {path}: 'step' must be an integer and 'check' one of {', '.join(CHECKS)}.")
    for name, annotation in ((f.name, str(f.type)) for f in fields(BundleManifest)):
        if name in data and not _fits(data[name], annotation):
            raise InputError(f"crash bundle {path}: '{name}' in {MANIFEST_NAME} must be {_describe(annotation)}, "
                             f"got {type(data[name]).__name__}; the manifest is damaged.")
    kind = (data.get("rebuild") or {}).get("kind")
    if kind is not None and kind not in REBUILD_KINDS:
        raise InputError(f"crash bundle {path}: rebuild kind {kind!r} is not one of {', '.join(REBUILD_KINDS)}.")
    script = (data.get("rebuild") or {}).get("script")
    if script is not None and not _script_fits(script):
        raise InputError(f"crash bundle {path}: 'rebuild.script' in {MANIFEST_NAME} must hold a path, argv (a list "
                         "of strings) and cwd; the manifest is damaged.")
    try:
        manifest = BundleManifest(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:
        raise InputError(f"crash bundle {path}: {MANIFEST_NAME} is malformed ({err}).") from None
    return Bundle(path=path, manifest=manifest)
