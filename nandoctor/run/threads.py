"""How many CPU threads torch may use: as many as the machine has free, not as many as it has.

torch sizes its intra-op pool by the machine's cores. On a machine shared with other work
(parallel CI jobs, pytest-xdist, other torch processes) every parallel region then waits for
threads the OS has descheduled, and a step's many small kernels wait once each: beside other
multi-threaded torch jobs a run slows down several times over. `threads: auto` (the default)
looks at the cores this process may run on and the load already on them and lowers torch's
thread count to the cores that are free (never raises it); a number sets it outright. A
user's own OMP_NUM_THREADS / MKL_NUM_THREADS is left alone under `auto`: it is their choice.
"""
from __future__ import annotations

import math
import os
from typing import Any, Union

import torch

_USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_load() -> float:
    """Runnable threads on the machine, averaged over the last minute (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_cores(cores: int, load: float) -> int:
    """Cores left for us when the load average is `load` on `cores` (at least one). This
    process itself, busy since it started, counts for up to one runnable thread of the load."""
    others = max(0.0, load - 1.0)
    return max(1, min(cores, math.floor(cores - others + 0.5)))


def fit_threads(setting: Union[str, int] = "auto") -> dict[str, Any]:
    """Set torch's intra-op threads for this run and return what was chosen and why (the
    trace's `environment.threads`): {"threads", "cores", "load", "reason"}."""
    cores, load, before = usable_cores(), machine_load(), torch.get_num_threads()
    if setting != "auto":
        threads, reason = int(setting), "set by the threads key"
    elif any(os.environ.get(name) for name in _USER_VARIABLES):
        threads, reason = before, "set by " + ", ".join(n for n in _USER_VARIABLES if os.environ.get(n))
    else:          # only ever fewer: a torch.set_num_threads() before the run still holds
        free = free_cores(cores, load)
        threads = min(before, free)
        reason = (f"{free} of {cores} cores free (load {load:.1f}): oversubscribed" if threads < before
                  else f"{cores} cores, load {load:.1f}")
    if threads != before:
        torch.set_num_threads(threads)
    return {"threads": threads, "cores": cores, "load": round(load, 2), "reason": reason}
