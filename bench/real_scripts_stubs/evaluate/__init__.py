"""Stand-in for Hugging Face `evaluate`: `evaluate.load(...)` downloads the metric's code from
the Hub, which the real scripts may not reach. Accuracy and F1 of a binary task, computed
locally, are what the GLUE MRPC metric reports."""
from __future__ import annotations


class _BinaryMetric:
    def __init__(self) -> None:
        self._predictions: list[int] = []
        self._references: list[int] = []

    def add_batch(self, *, predictions, references) -> None:
        self._predictions += [int(p) for p in predictions]
        self._references += [int(r) for r in references]

    def compute(self, *, predictions=None, references=None) -> dict[str, float]:
        if predictions is not None:
            self.add_batch(predictions=predictions, references=references)
        pairs = list(zip(self._predictions, self._references))
        self._predictions, self._references = [], []
        true_positive = sum(p == r == 1 for p, r in pairs)
        predicted, actual = sum(p for p, _ in pairs), sum(r for _, r in pairs)
        f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
        return {"accuracy": sum(p == r for p, r in pairs) / max(len(pairs), 1), "f1": f1}


def load(path: str, config_name: str | None = None, **kwargs) -> _BinaryMetric:
    return _BinaryMetric()
