"""torchvision.transforms.functional: importable, never used by the scripts."""
from .._absent import absent


def __getattr__(name):
    return absent(__name__, name)
