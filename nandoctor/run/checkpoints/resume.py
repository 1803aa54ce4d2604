"""`scan --checkpoint`: load a checkpoint's weights, optimizer and scaler state into a session."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...errors import InputError
from ...load.checkpoint import read_checkpoint


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
