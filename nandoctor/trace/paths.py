"""The execution paths a training step took, and where a replay's paths differ (plain, torch-free).

torch picks among several implementations of the same math at run time: an attention kernel
for `F.scaled_dot_product_attention` (flash, memory-efficient, cuDNN or the plain math), a fused
inference fast path for `nn.MultiheadAttention` / `nn.TransformerEncoderLayer`, a fused, foreach
or for-loop optimizer step. Each gives slightly different numbers, and some turn an edge case
(a fully masked row) into NaN where another gives zeros. A watch bundle records the paths the
recorded run took (`paths` in the manifest), the replay records the ones it took, and a
difference becomes a fact the report names: a finite replay that ran another path did not
replay the recorded arithmetic, so "not reproducible" is not the conclusion.

Every kind of path has one entry in PATH_KINDS: what it is, why a difference matters and what
to try; nothing here is keyed to one model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# The manifest's `paths.version`: a reader skips a newer version's entries (with a note).
PATHS_VERSION = 1

DEVICE, TORCH, AUTOCAST, SDPA, FAST_PATH, OPTIMIZER = "device", "torch", "autocast", "sdpa", "fast-path", "optimizer"
# A recorded SDPA entry for every call of the run (the watch did not see the calls themselves):
# its path lists the backends enabled on the recorded device, in torch's order of preference.
EVERY_CALL = "*"
# SDPA backend names, as torch.nn.attention.SDPBackend's members read in lower case.
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math", "overrideable")


@dataclass(frozen=True)
class PathKind:
    """One kind of run-time path choice: how to name it, why it matters, what to do."""
    label: str          # how a site of this kind reads in a sentence
    why: str            # why the difference can hide the failure
    test: str           # how to test, in the run, whether the recorded path is at fault
    here: str = ""      # how to take the recorded path again on the recorded device (when the replay ran there)

    def fix(self, recorded_device: str, replayed_device: str) -> str:
        """Replay on the recorded device when the replay ran elsewhere; else what `here` says; and `test`."""
        if recorded_device and replayed_device and recorded_device != replayed_device:
            first = f"replay on a {recorded_device} machine (`nandoctor replay BUNDLE --device {recorded_device}`)"
        else:
            first = self.here
        return f"{first}, or {self.test}" if first and self.test else first or self.test


PATH_KINDS: dict[str, PathKind] = {
    SDPA: PathKind(
        "scaled_dot_product_attention",
        "another attention kernel computes the scores with other blocking, accumulation and masking",
        "force the math backend in the run with `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)` to test whether "
        "the fused kernel is at fault",
        "replay with a torch build that has the recorded backend, enabled (`torch.backends.cuda.enable_flash_sdp`, "
        "`enable_mem_efficient_sdp`, `enable_cudnn_sdp`)"),
    FAST_PATH: PathKind(
        "the fused inference fast path",
        "the fast path is one fused kernel (a fully padded row gives NaN there, zeros on the slow path)",
        "turn it off in the run with `torch.backends.mha.set_fastpath_enabled(False)` to test whether the fused "
        "kernel is at fault",
        "replay where the fast path's conditions hold as they did (eval mode, no autocast, nothing to differentiate)"),
    OPTIMIZER: PathKind(
        "the optimizer step",
        "fused and foreach optimizer kernels order and fuse the update's arithmetic differently from the "
        "for-loop",
        "build the run's optimizer with `fused=False, foreach=False` to test whether the fused optimizer kernel is "
        "at fault"),
    AUTOCAST: PathKind(
        "autocast",
        "autocast runs matmuls and convolutions in a 16-bit dtype",
        "run without autocast to test whether 16-bit arithmetic is at fault",
        "replay under the recorded autocast (the bundle's `precision`)"),
    DEVICE: PathKind(
        "the device",
        "another device runs other kernels, with other reduction orders and random numbers",
        ""),
    TORCH: PathKind(
        "the torch version",
        "another torch release may choose other kernels and fast-path conditions",
        "",
        "replay with the torch version the run used"),
}
# The order a report names differences in: the most specific kernel choice first.
KIND_ORDER = (SDPA, FAST_PATH, OPTIMIZER, AUTOCAST, DEVICE, TORCH)


@dataclass
class ExecutionPath:
    """The path one call site took: `site` is a module path for attention ("" the model itself,
    "*" every call), "optimizer" (or "optimizer[i]" for a second one) for the optimizer step, and
    the kind's name for the run-wide settings (device, torch, autocast)."""
    site: str
    kind: str                                   # one of PATH_KINDS
    path: str                                   # "flash", "math", "fast", "slow", "fused", "foreach", "for-loop", "cuda", "bfloat16", "off", "2.13.0"
    device: str = ""                            # the device type it ran on (attention, optimizer)
    why: str = ""                               # why this path (e.g. "training is enabled" for a slow path)
    calls: int = 1                              # calls of the step at this site that took it


@dataclass
class PathDifference:
    """A site whose replayed path is not the recorded one."""
    site: str
    kind: str
    recorded: str                               # "flash on cuda"
    replayed: str                               # "math on cpu"
    why: str = ""                               # why the replay could not take the recorded path
    fix: str = ""                               # what to try (PATH_KINDS[kind].fix)

    def short(self) -> str:
        return f"{site_label(self.kind, self.site)}: recorded {self.recorded}, replayed {self.replayed}"

    def sentence(self) -> str:
        return (f"{site_label(self.kind, self.site)}: recorded {self.recorded}; replayed {self.replayed}"
                + (f" ({self.why})" if self.why else ""))


@dataclass
class ReplayPaths:
    """The recorded run's paths (from the bundle), the replay's, and their differences."""
    recorded: list[ExecutionPath] = field(default_factory=list)
    replayed: list[ExecutionPath] = field(default_factory=list)
    differences: list[PathDifference] = field(default_factory=list)
    note: str = ""                              # what was not compared, and why (an older bundle, an unobserved step)


def site_label(kind: str, site: str) -> str:
    label = PATH_KINDS[kind].label if kind in PATH_KINDS else kind
    if kind in (SDPA, FAST_PATH):
        where = "every call" if site == EVERY_CALL else f"`{site}`" if site else "the model"
        return f"{label} at {where}"
    if kind == OPTIMIZER and site not in ("", OPTIMIZER):
        return f"{label} ({site})"
    return label


def paths_from_plain(data: Any) -> tuple[list[ExecutionPath], str]:
    """The manifest's `paths` as entries, and a note when it cannot be read (None: an older
    bundle; a newer version; a malformed entry is left out, never guessed)."""
    if data is None:
        return [], "the bundle records no execution paths (written by an older nandoctor)"
    if (not isinstance(data, dict) or not isinstance(data.get("version"), int) or isinstance(data["version"], bool)
            or not isinstance(data.get("sites"), list)):
        return [], "the bundle's `paths` is malformed; paths not compared"
    if data["version"] > PATHS_VERSION:
        return [], f"the bundle's `paths` has version {data['version']}; this nandoctor reads up to {PATHS_VERSION}"
    entries = []
    for item in data["sites"]:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("site", "kind", "path")):
            continue
        if item["kind"] not in PATH_KINDS:
            continue
        calls = item.get("calls", 1)
        entries.append(ExecutionPath(site=item["site"], kind=item["kind"], path=item["path"],
                                     device=str(item.get("device") or ""), why=str(item.get("why") or ""),
                                     calls=calls if isinstance(calls, int) and not isinstance(calls, bool) else 1))
    return entries, ""


def paths_to_plain(entries: list[ExecutionPath]) -> dict[str, Any]:
    """The manifest's `paths`: {"version", "sites": [{site, kind, path, device, why, calls}]};
    `device` and `why` only when set, `calls` only when not 1 (a deep model has hundreds of sites)."""
    sites = []
    for e in entries:
        item: dict[str, Any] = {"site": e.site, "kind": e.kind, "path": e.path}
        item.update({k: v for k, v in (("device", e.device), ("why", e.why)) if v})
        if e.calls != 1:
            item["calls"] = e.calls
        sites.append(item)
    return {"version": PATHS_VERSION, "sites": sites}


def _matches(recorded: ExecutionPath, replayed: ExecutionPath) -> bool:
    """A path may list alternatives ("flash/math": the backends a device had enabled;
    "fast/slow": a fast path decided by the call's grad mode): any one in common matches."""
    if recorded.device and replayed.device and recorded.device != replayed.device:
        return False
    return bool(set(replayed.path.split("/")) & set(recorded.path.split("/")))


def compare_paths(recorded: list[ExecutionPath], replayed: list[ExecutionPath],
                  why_not: Optional[dict[tuple[str, str], str]] = None) -> list[PathDifference]:
    """The sites whose replayed path differs from the recorded one. A site the replay did not
    reach, or the recorded run did not record, is not a difference (nothing to compare);
    `why_not` holds, per recorded (kind, site), why the replay could not take that path."""
    why_not = why_not or {}
    by_site = {(e.kind, e.site): e for e in recorded}
    differences = []
    for seen in replayed:
        was = by_site.get((seen.kind, seen.site))
        if was is None and seen.kind == SDPA:
            was = by_site.get((SDPA, EVERY_CALL))
        if was is None:
            continue
        if _matches(was, seen):
            continue
        kind = PATH_KINDS[seen.kind]
        if seen.kind == DEVICE:
            recorded_device, replayed_device = was.path, seen.path
        else:
            recorded_device = was.device or next((e.path for e in recorded if e.kind == DEVICE), "")
            replayed_device = seen.device or next((e.path for e in replayed if e.kind == DEVICE), "")
        why = why_not.get((was.kind, was.site)) or seen.why or kind.why
        recorded_text = was.path if "/" not in was.path else f"one of {was.path.replace('/', ', ')}"
        differences.append(PathDifference(
            site=seen.site, kind=seen.kind,
            recorded=recorded_text + (f" on {was.device}" if was.device else ""),
            replayed=(seen.path if "/" not in seen.path else f"one of {seen.path.replace('/', ', ')}")
            + (f" on {seen.device}" if seen.device else ""),
            why=why, fix=kind.fix(recorded_device, replayed_device)))
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(differences, key=lambda d: order.get(d.kind, len(order)))
