"""torchvision.models: importable (torchmetrics imports from it when torchvision is present), never used."""
from ._absent import absent


def __getattr__(name):
    return absent(__name__, name)
