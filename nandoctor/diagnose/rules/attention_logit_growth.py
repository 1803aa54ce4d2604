"""Attention logits that keep growing: attention entropy collapse, then overflow."""
from __future__ import annotations

import math

from ...trace import EarlyWarning
from .base import EarlyWarningRule


class AttentionLogitGrowth(EarlyWarningRule):
    """What it detects: an attention module whose largest logit max |q.k| x scale passed
    `early_warnings.attention_logit_max` (default 50) and grew at least `early_warnings.growth`
    times over the sampled steps. Measured every `early_warnings.every` steps from the inputs of
    `F.scaled_dot_product_attention`, from `nn.MultiheadAttention`'s input projection, and from
    the scores a hand-written attention passes to softmax.

    Why it produces NaN or Inf: at high learning rates the query and key weights grow, and the
    logits grow with their product (Wortsman et al. 2023; Dehghani et al. 2023). The softmax
    becomes one-hot (attention entropy collapse), its gradients vanish or spike, and the loss
    diverges. In float16 a score past 65504 is inf, and softmax over a row holding inf is NaN.

    Evidence used: the module, the logit at the sampled step, its ratio to the first sample of
    the window and the log-linear slope, and how many steps before the first NaN the warning came.

    How to fix: qk-norm (a LayerNorm on queries and keys before the dot product), or soft-cap the
    logits (`scores = cap * torch.tanh(scores / cap)`, cap ~ 30-50); lower the learning rate or
    lengthen the warm-up; keep the attention scores in float32 (or bfloat16) rather than float16.

    Example: step 5: attention_logit_max in `blocks.0.attn` = 3472; trend 2.7e3x its value at
    step 0; warned 35 steps before the first NaN/Inf (step 40).

    Thresholds: `early_warnings.attention_logit_max` 50 (e^50 ~ 5e21: one-hot attention) and
    `early_warnings.growth` 2x over `early_warnings.samples` 8 samples. Confidence 0.8 when the logit
    grew 10x or overflowed, else 0.6.
    """

    id = "attention-logit-growth"
    title = "attention logits keep growing (entropy collapse, then overflow)"
    mechanism_text = "overflow"
    fix_text = ("Add qk-norm (LayerNorm on queries and keys) or soft-cap the attention logits "
                "(cap * tanh(scores / cap)); lower the learning rate or lengthen the warm-up; keep the scores in float32.")

    def confidence(self, warning: EarlyWarning) -> float:
        return 0.8 if not math.isfinite(warning.value) or (warning.ratio or 0) >= 10 else 0.6
