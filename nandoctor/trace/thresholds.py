"""Default diagnosis thresholds; a scan records the ones it used in its trace's config."""
from __future__ import annotations

# Diagnosis thresholds. Each default is documented with its reason in configs/default.yaml
# and the README; rules read them from here, never hard-code them.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "update_ratio_high": 0.1,          # ||dw||/||w|| per step; healthy training sits near 1e-3
    "headroom_warn": 10.0,             # dtype max / max|activation|; under 10x an outlier overflows
    "underflow_zero_share": 0.05,      # extra share of zero grads in 16-bit vs fp32
    "vanishing_ratio": 1e-4,           # first-layer / last-layer gradient norm
    "exploding_growth": 1e3,           # growth of the total grad norm across steps
    "exploding_layer_ratio": 1e4,      # first-layer / last-layer gradient norm
    "exploding_grad_weight_ratio": 1e3,  # ||grad|| / ||w|| of a layer; healthy layers sit below ~1
    "skip_streak": 5,                  # consecutive GradScaler skips that mean collapse
    # A GradScaler starts at 65536 and halves per skip: a model whose gradients need a scale of
    # 256 skips 8 steps before its first update. Skips before the first update are calibration,
    # not collapse, unless the scale falls below this floor (16+ halvings: even an unscaled loss
    # overflows, so no scale will do).
    "scale_floor": 1.0,
    "data_abs_max": 1e4,               # |input| beyond this is not a normalised range
    "init_growth": 1e3,                # activation growth from first to last layer at step 0
    "init_weight_abs_max": 1e3,        # |w| at init beyond this is a broken init
    # |activation| above 1e8 is far past any normalised network (LayerNorm/BatchNorm outputs sit
    # at O(1), logits at O(10)); its square is 1e16, which overflows float16 at once and float32
    # after a few more products.
    "activation_abs_max": 1e8,
    "loss_abs_max": 1e10,              # a loss of 1e10: outputs ~1e5 times the targets' scale
    "activation_growth": 1e3,          # one layer's max |activation| growing 1000x over the steps
}
