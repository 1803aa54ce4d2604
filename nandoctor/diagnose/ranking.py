"""The order of findings, and the reason for each place, in words.

A finding that its own experiment refuted comes after every finding that was not refuted,
whatever its severity: its fix was tried and the failure stayed. Then errors before warnings
before info. Within a severity, causes that explain where the first non-finite value was born
come before downstream symptoms; among those, upstream causes first (NaN data explains every
NaN after it; bad labels, data scale or the init explain a divergence better than the learning
rate; a divergence the watched run's history shows began before the failing step explains the
op that finally overflowed), then a cause that makes the run diverge before the symptoms it
shows even when an experiment confirmed the symptom's fix (clipping), then causes an experiment
confirmed (a confirmed `high-lr` outranks the `exploding-gradients` it produces), then specific
mechanisms before symptoms and the fallback, then confidence.

Then the symptoms hang under their root: how a divergence shows (exploding activations or
gradients, weights that blow up, a collapsing loss scale, gradients that vanish on the dead
plateau a spike leaves) is a consequence of the leading cause when that cause is one that makes
a run diverge (the learning rate, the init, the data), or when it explains the first non-finite
value and the symptom does not. A symptom is never more severe than its root, so nesting it
changes no verdict; a refuted leader takes none.

Behind an unrefuted error that explains where the first non-finite value was born, another
error is a second root cause only when it is a fact (NaN data, a crash in the user's code,
labels out of range) or an experiment confirmed it. A competing hypothesis that no experiment
confirmed, or that its own experiment refuted, is kept with its evidence as a warning: one root
cause gives one error (one CI annotation). The verdict does not move: the leader is still an error.
"""
from __future__ import annotations

from .finding import Finding, Severity

# 0: the data or the code is wrong before any arithmetic; 1: the starting point is wrong;
# 2: a mechanism (an op, a precision, a learning rate); 3: how a divergence shows (symptoms);
# 4: what is left when nothing specific applies.
TIER = {"data-nonfinite": 0, "data-outlier-samples": 0, "label-range": 0, "user-error": 0, "data-scale": 1, "bad-init": 1,
        "exploding-gradients": 3, "exploding-activations": 3, "weight-blowup": 3, "loss-scale-collapse": 3,
        "vanishing-gradients": 3, "fp16-underflow": 3, "nonreproducible": 4, "compile-numerics": 2,
        "unexplained-nonfinite": 4, "scan-incomplete": 4}
UPSTREAM = 1      # tiers up to this one come before anything else that explains the origin
# How a divergence shows; never a root while a cause leads that explains it.
SYMPTOMS = {"exploding-gradients", "exploding-activations", "weight-blowup", "loss-scale-collapse", "vanishing-gradients"}
# Causes that make a whole run diverge: every symptom above is theirs.
DIVERGENCE_ROOTS = {"high-lr", "bad-init", "data-scale", "data-nonfinite", "label-range"}


def _tier(finding: Finding, wide_unhealthy: bool = False) -> int:
    tier = TIER.get(finding.id, 2)
    # A precision cause is upstream because a wider precision stayed finite; not when that wider
    # run was itself diverging (see _wide_precision_unhealthy).
    demoted = finding.id in PRECISION_CAUSES and wide_unhealthy
    return min(tier, UPSTREAM) if finding.upstream and not demoted else tier


# Causes that only a 16-bit dtype has: when a wider precision ran the same data finite (the
# rule then marks the finding `upstream`), nothing upstream of the arithmetic can explain it.
PRECISION_CAUSES = {"fp16-overflow", "fp16-underflow", "bf16-precision"}


def _wide_precision_unhealthy(findings: list[Finding]) -> bool:
    """A 32/64-bit run stayed finite only by its headroom: it shows a divergence's symptoms
    (activations or gradients exploding) too. Then the 16-bit failure proves less than an upstream
    cause (a bad init, a high lr) that breaks every precision given a few more steps."""
    return any(f.id in SYMPTOMS and any(p.startswith(("32", "64")) for p in f.precisions) for f in findings)


def _proven_precision(finding: Finding, wide_unhealthy: bool) -> bool:
    return (finding.id in PRECISION_CAUSES and finding.upstream and finding.explains_origin
            and not wide_unhealthy)


def _divergence_root_present(findings: list[Finding]) -> bool:
    """An unrefuted cause that makes a whole run diverge explains the origin."""
    return any(f.id in DIVERGENCE_ROOTS and f.explains_origin and f.confirmed is not False for f in findings)


def _key(finding: Finding, wide_unhealthy: bool = False, root_present: bool = False) -> tuple:
    tier = _tier(finding, wide_unhealthy)
    upstream = tier if finding.explains_origin and tier <= UPSTREAM else UPSTREAM + 1
    confirmed = {True: 0, None: 1, False: 2}[finding.confirmed]
    proven_precision = _proven_precision(finding, wide_unhealthy)
    # A symptom whose own fix was confirmed (clipping keeps a run that ascends a negative lr
    # finite over the horizon, by slowing it) still shows the divergence; it never leads the cause.
    shown_symptom = root_present and finding.id in SYMPTOMS
    return (finding.confirmed is False, Severity(finding.severity).rank, not finding.explains_origin,
            not proven_precision, upstream, shown_symptom, confirmed, tier, -finding.confidence)


def _reason(finding: Finding, first: Finding | None, wide_unhealthy: bool = False) -> str:
    tier = _tier(finding, wide_unhealthy)
    if finding.confirmed is False:
        return "refuted by an experiment: its fix did not remove the failure"
    if finding.symptom_of is not None:
        return f"a symptom of the leading cause ({finding.symptom_of}), not a cause of its own"
    if _proven_precision(finding, wide_unhealthy):
        return "the 16-bit precision's cause: a wider precision ran the same step finite"
    if finding.explains_origin and tier <= UPSTREAM:
        return "upstream cause: it explains the first non-finite value and everything after it"
    if finding.confirmed:
        return "explains the origin, confirmed by an experiment" if finding.explains_origin else "confirmed by an experiment"
    if first is not None and first is not finding and first.explains_origin and tier >= 3:
        return f"a symptom of the leading cause ({first.id}), not a cause of its own"
    if finding.explains_origin:
        return ("explains where the first non-finite value was born" if tier <= 2 else
                "explains the origin, but as a symptom: no more specific cause was found" if tier == 3 else
                "fallback: the failure is real and no specific rule explains it")
    if finding.severity == Severity.ERROR.value:
        return "an error that does not explain where the first non-finite value was born"
    return f"{finding.severity}: a risk, not the failure's origin"


def _is_symptom_of(finding: Finding, root: Finding) -> bool:
    if finding is root or finding.id not in SYMPTOMS:
        return False
    if Severity(finding.severity).rank < Severity(root.severity).rank:
        return False            # an error never hangs under a warning: the verdict stays what it was
    return root.id in DIVERGENCE_ROOTS or (root.explains_origin and not finding.explains_origin)


# Facts rather than hypotheses: each is a root cause of its own whatever else is found.
FACTS = {"data-nonfinite", "user-error", "label-range", "data-outlier-samples"}


def _competing_hypothesis(finding: Finding, leader: Finding) -> bool:
    if finding.confirmed is False:
        return True
    return (leader.explains_origin and finding.confirmed is not True and finding.id not in FACTS
            and finding.id not in ("unexplained-nonfinite", "scan-incomplete"))


def rank(findings: list[Finding]) -> list[Finding]:
    """Sort the findings, mark the leading cause's symptoms (`symptom_of`, placed after every
    root), show competing hypotheses behind the leading error as warnings (`competing`) and fill
    each one's `rank_reason`."""
    for finding in findings:
        finding.symptom_of = None
        if finding.competing:           # ranked again (after the experiments): judged afresh
            finding.severity, finding.competing = Severity.ERROR.value, False
    wide_unhealthy = _wide_precision_unhealthy(findings)
    root_present = _divergence_root_present(findings)

    def key(f: Finding) -> tuple:
        return _key(f, wide_unhealthy, root_present)

    ordered = sorted(findings, key=key)
    first = ordered[0] if ordered else None
    if first is not None and first.id not in SYMPTOMS and first.confirmed is not False:
        for finding in ordered:
            if _is_symptom_of(finding, first):
                finding.symptom_of = first.id
    if first is not None and first.severity == Severity.ERROR.value and first.confirmed is not False:
        for finding in ordered[1:]:
            if (finding.severity == Severity.ERROR.value and finding.symptom_of is None
                    and _competing_hypothesis(finding, first)):
                finding.severity, finding.competing = Severity.WARNING.value, True
    # Roots first (a competing hypothesis now after the errors), then the symptoms.
    ordered = sorted((f for f in ordered if f.symptom_of is None), key=key) + \
        [f for f in ordered if f.symptom_of is not None]
    for finding in ordered:
        finding.rank_reason = _reason(finding, first, wide_unhealthy)
        if finding.competing and finding.confirmed is not False and first is not None:
            finding.rank_reason = (f"a competing hypothesis no experiment confirmed: a risk beside the leading "
                                   f"cause ({first.id}), not a second root cause")
    return ordered
