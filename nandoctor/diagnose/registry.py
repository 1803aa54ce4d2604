"""The registry: every cause rule, one per cause id, in the order they are checked."""
from __future__ import annotations

from typing import Optional

from .rules.activation_outliers import ActivationOutliers
from .rules.adam_update_anomaly import AdamUpdateAnomaly
from .rules.attention_logit_growth import AttentionLogitGrowth
from .rules.bad_init import BadInit
from .rules.bf16_precision import Bf16Precision
from .rules.base import Rule
from .rules.compile_numerics import CompileNumerics
from .rules.data_nonfinite import DataNonfinite
from .rules.data_outlier_samples import DataOutlierSamples
from .rules.data_scale import DataScale
from .rules.empty_reduction import EmptyReduction
from .rules.exploding_activations import ExplodingActivations
from .rules.exploding_gradients import ExplodingGradients
from .rules.fp16_overflow import Fp16Overflow
from .rules.fp16_underflow import Fp16Underflow
from .rules.grad_spike import GradSpike
from .rules.grad_singularity import GradSingularity
from .rules.high_lr import HighLearningRate
from .rules.label_range import LabelRange
from .rules.loss_scale_collapse import LossScaleCollapse
from .rules.loss_spike import LossSpike
from .rules.masked_inf import MaskedInf
from .rules.masked_softmax import MaskedSoftmax
from .rules.nonreproducible import Nonreproducible
from .rules.optimizer_eps import OptimizerEps
from .rules.output_logit_drift import OutputLogitDrift
from .rules.param_nonfinite import ParamNonfinite
from .rules.poisoned_optimizer_state import PoisonedOptimizerState
from .rules.scan_incomplete import ScanIncomplete
from .rules.unexplained_nonfinite import UnexplainedNonfinite
from .rules.unstable_op import UnstableOp
from .rules.user_error import UserCodeError
from .rules.vanishing_gradients import VanishingGradients
from .rules.weight_blowup import WeightBlowup

RULES: list[Rule] = [
    DataNonfinite(), DataOutlierSamples(), DataScale(), LabelRange(), HighLearningRate(), BadInit(), UnstableOp(), GradSingularity(),
    MaskedSoftmax(), MaskedInf(), EmptyReduction(), Fp16Overflow(), Fp16Underflow(), Bf16Precision(), LossScaleCollapse(),
    ExplodingActivations(), ExplodingGradients(), VanishingGradients(), OptimizerEps(), PoisonedOptimizerState(), ParamNonfinite(), WeightBlowup(),
    AttentionLogitGrowth(), OutputLogitDrift(), AdamUpdateAnomaly(), ActivationOutliers(), LossSpike(), GradSpike(),
    UserCodeError(), CompileNumerics(), Nonreproducible(), ScanIncomplete(), UnexplainedNonfinite(),
]
_BY_ID = {rule.id: rule for rule in RULES}
assert len(_BY_ID) == len(RULES), "two rules claim one cause id"


def rule_ids() -> list[str]:
    return [rule.id for rule in RULES]


def get_rule(cause_id: str) -> Optional[Rule]:
    return _BY_ID.get(cause_id)
