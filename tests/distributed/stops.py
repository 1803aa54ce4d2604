"""What each torchrun test script records when the watch stops it: the test reads these files to
check that every rank stopped, at which step, and how close together in time."""
import json
import os
import time


def record_stop(out: str, rank: int, err) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"stopped-rank-{rank}.json"), "w") as f:
        json.dump({"time": time.time(), "step": err.step, "bundle": str(err.bundle), "message": str(err)}, f)
