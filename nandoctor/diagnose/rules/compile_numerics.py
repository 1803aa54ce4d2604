"""A NaN that only the compiled program produces."""
from __future__ import annotations

from ..facts import compile_explains
from ..finding import Finding, Severity
from .base import Context, Rule


class CompileNumerics(Rule):
    """What it detects: a compiled run (`torch.compile`) whose failing step stays finite when
    replayed in eager mode from the same weights, optimizer state, batch and random state, but
    goes non-finite again when replayed under a compiler stage. The step is replayed down the
    compiler's ladder, eager (Dynamo only) -> aot_eager (AOTAutograd) ->
    aot_eager_decomp_partition (Inductor's decompositions and partitioner) -> inductor, and
    inductor with `emulate_precision_casts` or `fallback_random`; the first stage that goes
    non-finite names the compiler layer, and the op it made non-finite is found by compiling
    ever shorter prefixes of the captured graph.

    Why it produces NaN or Inf: the compiled program is not the program you wrote. A
    decomposition rewrites an op into a formula that overflows where the original kernel did
    not (softmax, var, logsumexp, norms), a fused kernel keeps low-precision intermediates in
    a different dtype than eager, a reduction runs in another order, random ops draw other
    numbers, or a compiler pass is simply wrong.

    Evidence used: the ladder (each stage: finite or non-finite, and where), the first failing
    stage and the last finite one, the op the failing stage made non-finite with the user's line
    that wrote it (from the FX graph's stack traces) and, for Inductor, the generated kernel and the
    subsystem PyTorch's CompilerBisector blames (a graph pass, a lowering), and the standalone repro
    script written next to the bundle.

    How to fix: apply the smallest setting that kept the step finite (an Inductor config flag
    such as `torch._inductor.config.emulate_precision_casts = True`, or a less transforming
    backend such as `torch.compile(model, backend="aot_eager")`), or keep the named function out
    of the graph with `torch.compiler.disable`; then report the bug to PyTorch with the repro
    script (`<bundle>-compile-repro.py` and its saved inputs), which runs the captured graph in
    eager and compiled and exits 1 while the compiled result is non-finite.

    Example: `torch.compile(model)` trains to NaN at step 40; `nandoctor replay` finds step 40
    finite in eager and in aot_eager, non-finite from aot_eager_decomp_partition on, at the
    `torch.softmax` of `attention.py:57`.

    Thresholds: none; claimed only when the eager replay stayed finite and a compiler stage went
    non-finite on the same state. Confidence 0.9 (0.8 when the op was not located). Severity
    error: the recorded run went non-finite.
    """

    id = "compile-numerics"
    title = "the compiler produced the NaN: eager stays finite"

    def check(self, ctx: Context) -> list[Finding]:
        findings = []
        for run in ctx.trace.runs:
            if run.first_nonfinite is None or run.first_nonfinite.reproduced is not False or not compile_explains(run):
                continue
            replay = run.compile_replay
            assert replay is not None
            culprit = replay.culprit
            evidence = [f"step {run.first_nonfinite.step} replayed in eager: finite; down the compiler's ladder:"]
            evidence += ["  " + row for row in replay.table()]
            evidence.append(f"first non-finite stage: {replay.first_failing}"
                            + (f" (last finite: {replay.last_finite})" if replay.last_finite else ""))
            failing = replay.stage(replay.first_failing)
            label = (f"under the run's own backend {failing.backend}" if failing is not None
                     and failing.name.startswith("recorded:") else f"from the {replay.first_failing} stage on")
            title = f"{run.precision}: step {run.first_nonfinite.step} goes non-finite only when compiled, {label}"
            if culprit is not None:
                where = f" at {culprit.location}" if culprit.location else ""
                inside = f" in {culprit.module}" if culprit.module else ""
                evidence.append(f"op made non-finite by {replay.first_failing}: {culprit.op}{inside} ({culprit.phase}, "
                                f"graph {culprit.graph}, node {culprit.node}){where}; found by {culprit.found_by}")
                if culprit.kernel:
                    evidence.append(f"Inductor's code for it: {culprit.kernel}")
                if culprit.component:
                    evidence.append(culprit.component)
                title += f", at {culprit.op}" + (f" ({culprit.location.file.rsplit('/', 1)[-1]}:"
                                                  f"{culprit.location.line})" if culprit.location else "")
            if replay.avoid:
                evidence.append(f"avoided by: {replay.avoid} ({replay.avoid_stage}: finite)")
            if replay.repro:
                evidence.append(f"standalone repro for a PyTorch bug report: {replay.repro}"
                                + (f" (inputs: {replay.repro_inputs})" if replay.repro_inputs else ""))
            fix = (f"{'set' if replay.avoid.startswith('torch._inductor') else 'use'} `{replay.avoid}`" if replay.avoid else
                   "keep the named code out of the compiled graph with `torch.compiler.disable`")
            fix += "; report it to PyTorch" + (f" with {replay.repro}" if replay.repro else "")
            findings.append(Finding(self.id, Severity.ERROR.value, 0.9 if culprit is not None else 0.8, title, evidence,
                                    fix, module=(culprit.module or None) if culprit is not None else None,
                                    source=culprit.location if culprit is not None else None,
                                    precisions=[run.precision], explains_origin=True))
        return findings
