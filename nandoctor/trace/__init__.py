"""The trace: plain, torch-free, JSON-serialisable records of what was run or read.

It is the only door between stages: the run stage writes it, the diagnosis and the reports
read it. `scan.py` holds training runs, `checkpoint.py` a saved checkpoint, `experiments.py`
confirming experiments, `vocab.py` the shared vocabularies, `plain.py` the JSON round trip.
"""
from .checkpoint import OptimizerRecord, PostmortemTrace, TensorRecord
from .experiments import ExperimentRequest, ExperimentResult
from .plain import decode_float, encode_float, from_plain, to_plain
from .scan import (LAYER_FIELDS, PARAM_FIELDS, BatchTensorStats, LabelCheck, LayerSeries, LoopFacts, ModelInfo, NonfiniteEvent,
                   OpRef, ParamSeries, RunTrace, SourceLocation, StepRecord, TensorSummary, Trace, UNFINISHED_REASONS,
                   UnfinishedStep, UserError)
from .compile import CompileCulprit, CompileReplay, CompileStage
from .paths import ExecutionPath, PathDifference, ReplayPaths
from .samples import BlamedSample, Intervention, SampleBlame
from .warnings import EARLY_WARNING_DEFAULTS, SPIKE_DEFAULTS, EarlyWarning, LayerMove
from .vocab import (SCHEMA_VERSION, ErrorCategory, ExperimentId, Phase, Precision, RunStatus, Severity)

__all__ = [
    "UNFINISHED_REASONS", "UnfinishedStep", "CompileCulprit", "CompileReplay", "CompileStage", "ExecutionPath", "PathDifference", "ReplayPaths",
    "OptimizerRecord", "PostmortemTrace", "TensorRecord", "ExperimentRequest", "ExperimentResult", "decode_float",
    "encode_float", "from_plain", "to_plain", "LAYER_FIELDS", "PARAM_FIELDS", "BatchTensorStats", "LabelCheck",
    "LayerSeries", "LoopFacts", "ModelInfo", "NonfiniteEvent", "OpRef", "ParamSeries", "RunTrace", "SourceLocation", "StepRecord",
    "TensorSummary", "Trace", "UserError", "SCHEMA_VERSION", "ErrorCategory", "ExperimentId", "Phase", "Precision",
    "RunStatus", "Severity", "BlamedSample", "Intervention", "SampleBlame",
    "EARLY_WARNING_DEFAULTS", "SPIKE_DEFAULTS", "EarlyWarning", "LayerMove",
]
