"""A nested config object and the --a.b=value command-line overrides that set it."""
import random
from ast import literal_eval

import numpy as np
import torch


def set_seed(seed):
    """Seed Python, NumPy and torch alike."""
    for seed_fn in (random.seed, np.random.seed, torch.manual_seed):
        seed_fn(seed)


class CfgNode:
    """Attributes, possibly nested CfgNodes, settable from the command line."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __str__(self):
        return "\n".join(self._lines(0))

    def _lines(self, indent):
        out = []
        for key, value in self.__dict__.items():
            if isinstance(value, CfgNode):
                out.append(" " * indent + f"{key}:")
                out.extend(value._lines(indent + 4))
            else:
                out.append(" " * indent + f"{key}: {value}")
        return out

    def merge_from_args(self, args):
        """Apply overrides of the form --model.n_layer=2 --trainer.learning_rate=3e-4."""
        for arg in args:
            key, _, value = arg.partition("=")
            assert key.startswith("--") and _, f"expected --key=value, got {arg}"
            try:
                value = literal_eval(value)
            except (ValueError, SyntaxError):
                pass
            *path, leaf = key[2:].split(".")
            node = self
            for name in path:
                node = getattr(node, name)
            assert hasattr(node, leaf), f"{key[2:]} is not an attribute of the config"
            print(f"command line overwriting config attribute {key[2:]} with {value}")
            setattr(node, leaf, value)
