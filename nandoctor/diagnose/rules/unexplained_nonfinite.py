"""The fallback: a failed run no specific rule explains is still an error."""
from __future__ import annotations

from ...trace import RunStatus, RunTrace
from ...trace.numbers import num
from ..evidence import inside, library_note
from ..facts import user_line, where as user_place
from ..finding import Finding, Severity
from .base import Context, Rule


class UnexplainedNonfinite(Rule):
    """What it detects: a run whose loss, gradients or parameters became NaN/Inf, or whose code
    raised, where no specific cause rule recognised the mechanism. It carries the origin that
    the replay found: step, phase, op, module, the user's line, and the failing op's inputs.

    Why it produces NaN or Inf: unknown to the rules, but real: the trace recorded it. A CI gate
    must never pass a run that went non-finite because no rule had a name for it.

    Evidence used: the run's first non-finite event (or its exception), the op's input
    statistics (min, max, zeros, negatives, NaN/Inf counts) and the producer of its input.

    How to fix: look at the op at the reported line with those input statistics: guard its
    domain (clamp the input away from 0 or negatives), compute it in float32, or remove the
    value that carried NaN in. `nandoctor explain` on the other ids lists the common mechanisms.

    Example: `aten.special_zeta` returning Inf at step 3 in forward, at model.py:41.

    Thresholds: none; it fires on the fact that a failed run is not explained by another error.
    """

    id = "unexplained-nonfinite"
    title = "a non-finite value that no specific rule explains"

    def check(self, ctx: Context) -> list[Finding]:
        return []          # applied after the other rules by `unexplained_findings`


def _explained(run: RunTrace, findings: list[Finding]) -> bool:
    # A finding whose own experiment refuted it explains nothing: its fix left the failure.
    return any(f.severity == Severity.ERROR.value and run.precision in f.precisions and f.confirmed is not False
               for f in findings)


def unexplained_findings(ctx: Context, findings: list[Finding]) -> list[Finding]:
    """One error per failed run that no error finding covers; the verdict never rests on this."""
    out = []
    # One finding per origin, with every (precision, step) it appeared in; titles are made at the end.
    same_origin: dict[tuple, tuple[Finding, str, list[tuple[str, int]]]] = {}
    for run in ctx.trace.runs:
        status = RunStatus(run.status)
        if not status.failed or _explained(run, findings):
            continue
        event = run.first_nonfinite
        if event is None:
            err = run.error
            where = (user_line(err.user_source) or user_line(err.source)) if err else None
            out.append(Finding(
                "user-error", Severity.ERROR.value, 0.9,
                f"{err.exc_type if err else 'an exception'} in {err.phase if err else 'the run'} ({run.precision})",
                [f"{err.exc_type}: {err.message}" if err else run.note], 
                f"fix the exception raised at {where}" if where else "fix the exception raised in the model's code",
                source=where, precisions=[run.precision], explains_origin=True))
            continue
        where = user_place(event)
        kind = "NaN" if event.kind == "nan" else "Inf"
        key = (event.op, event.module, str(where), event.phase, event.kind)
        if key in same_origin:
            seen, _, places = same_origin[key]
            seen.precisions.append(run.precision)
            places.append((run.precision, event.step))
            continue
        op = event.op or event.surfaced_in or "an op"
        evidence = [f"{kind} born in {event.phase} at step {event.step}"
                    + (f", op {event.op}" if event.op else "") + (f", module {event.module}" if event.module else "")
                    + (f", at {where}" if where else "") + inside(event)]
        for t in event.inputs[:3]:
            if t.value is not None:
                evidence.append(f"{t.name} = {num(t.value)}")
            else:
                evidence.append(f"{t.name} {t.dtype}{t.shape}: min {num(t.min)} max {num(t.max)} zeros {t.zeros} "
                                f"negatives {t.negatives} nan {t.nan} inf {t.inf}")
        if event.producer is not None:
            evidence.append(f"its input was produced by {event.producer.op}"
                            + (f" at {event.producer.source}" if event.producer.source else ""))
        if event.detail:
            evidence.append(event.detail)
        if event.reproduced is False:
            evidence.append("the replay did not reproduce the failure, so the origin is where it surfaced")
        fix = (f"inspect {op} at {where}: keep its inputs inside the op's domain (clamp away from 0 and negatives), "
               "compute it in float32, or stop NaN/Inf entering it" if where else
               f"inspect {op}: keep its inputs inside the op's domain, compute it in float32, or stop NaN/Inf entering it"
               + library_note(event))
        finding = Finding(UnexplainedNonfinite.id, Severity.ERROR.value, 0.5,
                          f"{kind} in {event.phase} at step {event.step} ({run.precision}) that no rule explains",
                          evidence, fix, module=event.module or None, source=where, precisions=[run.precision],
                          explains_origin=True)
        same_origin[key] = (finding, f"{kind} in {event.phase}", [(run.precision, event.step)])
        out.append(finding)
    for finding, what, places in same_origin.values():
        (_, first_step), rest = places[0], places[1:]
        shown = ", ".join([places[0][0]] + [f"{precision} at step {step}" for precision, step in rest])
        finding.title = f"{what} at step {first_step} ({shown}) that no rule explains"
    return out
