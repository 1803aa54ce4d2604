"""The samples that carried a fired step, and what the watch's policies did about it (issue 21).

`SampleBlame` is a per-sample re-run of one step: a score per sample (its loss, its gradient
norm, its largest output, or its non-finite values), their median and MAD, and the samples that
dominate. `Intervention` is one entry of the skip list: a step skipped or rolled back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class BlamedSample:
    index: Optional[int]           # the dataset index (what the DataLoader's sampler yielded); None unknown
    micro_batch: int
    row: int                       # the sample's row in its micro-batch
    score: Optional[float]         # None: non-finite
    nonfinite: bool = False


@dataclass
class SampleBlame:
    step: int
    check: str                     # the check that fired: batch, loss, gradients, parameters, spike
    statistic: str                 # loss, grad_norm, output_max_abs, nonfinite_values
    method: str                    # how the scores were made
    samples: int                   # how many samples were scored
    median: Optional[float] = None
    mad: Optional[float] = None
    share: Optional[float] = None  # the dominant samples' share of the batch's excess over the median
    dominant: list[BlamedSample] = field(default_factory=list)


@dataclass
class Intervention:
    step: int
    policy: str                    # skip, rollback, stop (the rollback budget ran out)
    check: str
    reason: str
    samples: list[int] = field(default_factory=list)   # dataset indices appended to the skip list
    from_step: Optional[int] = None                     # rollback: the copy put back was taken before this step
    note: str = ""
