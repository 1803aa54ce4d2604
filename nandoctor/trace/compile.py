"""A compiled run's failing step replayed down torch.compile's ladder (plain, torch-free).

When the recorded run was compiled and its eager replay stayed finite, `run/compile_ladder.py`
runs the step again under each compiler stage, from the least to the most transforming:

    eager (Dynamo only) -> aot_eager (AOTAutograd) -> aot_eager_decomp_partition (+ Inductor's
    decompositions and partitioner) -> inductor -> inductor with one numerics flag set

The first stage that produces NaN/Inf names the compiler layer that introduces it; the stages
after it that are finite again name the flag that avoids it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .location import SourceLocation

# The ladder, in order. A stage is a backend plus Inductor config flags (torch._inductor.config).
EAGER_STAGE = "eager"
INDUCTOR = "inductor"
LADDER_STAGES = ("eager", "aot_eager", "aot_eager_decomp_partition", "inductor")
# Inductor numerics flags, each tried alone after a failing inductor stage: the first that makes
# the step finite is the minimal flag the report advises.
INDUCTOR_NUMERICS_FLAGS = ("emulate_precision_casts", "fallback_random")


@dataclass
class CompileStage:
    """One rung of the ladder and what the failing step did under it."""
    name: str                                   # "aot_eager", "inductor+emulate_precision_casts", "recorded: <backend>"
    backend: str
    config: dict[str, Any] = field(default_factory=dict)   # torch._inductor.config flags set for this stage
    finite: Optional[bool] = None               # None: the stage could not run (see `where`)
    where: str = ""                             # what was non-finite ("loss", "gradients of fc.weight") or the error
    seconds: float = 0.0


@dataclass
class CompileCulprit:
    """The op the failing stage made non-finite, as the user's program wrote it."""
    graph: int                                  # index of the compiled graph (0 = the first Dynamo compiled)
    node: str                                   # FX node name in that graph
    op: str                                     # what the node calls, e.g. "torch.exp", "aten.mul.Tensor"
    phase: str = "forward"                      # forward | backward
    location: Optional[SourceLocation] = None   # the user's line (FX node meta stack_trace)
    module: str = ""                            # the module that ran it ("blocks.0.attn"; "" for the model itself)
    kernel: str = ""                            # inductor: the generated kernel computing it (and its saved code)
    component: str = ""                         # inductor: what PyTorch's CompilerBisector blames (pass, lowering)
    found_by: str = ""                          # how it was found ("graph prefix bisection", "compiler bisector")


@dataclass
class CompileReplay:
    """The failing step of a compiled run, replayed stage by stage."""
    recorded: dict[str, Any] = field(default_factory=dict)  # backend, mode, options the run compiled with
    stages: list[CompileStage] = field(default_factory=list)
    first_failing: Optional[str] = None         # name of the first stage that went non-finite
    last_finite: Optional[str] = None           # name of the stage before it (finite)
    culprit: Optional[CompileCulprit] = None
    avoid: str = ""                             # the smallest setting that kept the step finite, as code
    avoid_stage: Optional[str] = None           # the stage that showed it
    repro: Optional[str] = None                 # path of the standalone repro script
    repro_inputs: Optional[str] = None          # path of its saved inputs
    seconds: float = 0.0
    note: str = ""

    def stage(self, name: str) -> Optional[CompileStage]:
        return next((s for s in self.stages if s.name == name), None)

    def table(self) -> list[str]:
        """The ladder as evidence lines: stage -> finite / non-finite / could not run."""
        rows = []
        for s in self.stages:
            outcome = "finite" if s.finite else "non-finite" if s.finite is False else "could not run"
            rows.append(f"{s.name}: {outcome}" + (f" ({s.where})" if s.where and s.finite is not True else "")
                        + f", {s.seconds:.1f} s")
        return rows
