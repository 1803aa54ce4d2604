"""The per-step flag vector of the watch: one small tensor per optimizer step, reduced on the
device and moved to the host in one transfer. Its own module because both the single-process
guard and the rank-aware layer (which all-reduces it across ranks) read its layout."""
from __future__ import annotations

# Slots, in order. *_bad slots are 0/1 and come first (a fold of several steps takes their
# maximum); the rest are values.
# listed_bad: the step's batch holds a sample an earlier run's skip list names (any rank's: all skip).
FLAGS = ("batch_bad", "loss_bad", "grads_bad", "params_bad", "local_grads_bad", "listed_bad", "loss", "grad_norm",
         "scale",
         # the previous step's: total parameter norm after it, and |update| / |weights| (statistics steps)
         "param_norm", "update_ratio")
SLOT = {name: i for i, name in enumerate(FLAGS)}
BAD_SLOTS = sum(1 for name in FLAGS if name.endswith("_bad"))
