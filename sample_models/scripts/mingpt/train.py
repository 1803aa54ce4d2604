"""Mirrors karpathy/minGPT projects/chargpt/chargpt.py (commit 37baab7), with the mingpt package
(model.py, trainer.py, utils.py) beside it as `pip install -e .` would make it importable: a
nested CfgNode config overridden by --trainer.learning_rate=... arguments, a character Dataset,
and the Trainer's loop (forward, zero_grad, backward, clip_grad_norm_(1.0), AdamW step, then an
on_batch_end callback that logs trainer.loss.item()). The loss is computed inside mingpt/trainer.py.

Injected bug (in expected.yaml): `--trainer.learning_rate=1e2` (default 5e-4). Clipping bounds the
gradient, not AdamW's step (~lr per weight), so the weights blow up and the loss is NaN within ~10
iterations.
"""
import sys

import torch
from torch.utils.data import Dataset

from mingpt.model import GPT
from mingpt.trainer import Trainer
from mingpt.utils import CfgNode as CN
from mingpt.utils import set_seed


def get_config():
    C = CN()
    C.system = CN(seed=3407)
    C.data = CharDataset.get_default_config()
    C.model = GPT.get_default_config()
    C.trainer = Trainer.get_default_config()
    C.trainer.learning_rate = 5e-4
    C.trainer.max_iters = 30
    return C


class CharDataset(Dataset):
    """Every block_size+1 window of the text, as (input ids, next-character ids)."""

    @staticmethod
    def get_default_config():
        return CN(block_size=32)

    def __init__(self, config, text):
        self.config = config
        alphabet = sorted(set(text))
        print(f"data has {len(text)} characters, {len(alphabet)} unique.")
        self.stoi = {ch: i for i, ch in enumerate(alphabet)}
        self.ids = torch.tensor([self.stoi[ch] for ch in text], dtype=torch.long)

    def get_vocab_size(self):
        return len(self.stoi)

    def get_block_size(self):
        return self.config.block_size

    def __len__(self):
        return len(self.ids) - self.config.block_size

    def __getitem__(self, start):
        window = self.ids[start:start + self.config.block_size + 1]
        return window[:-1], window[1:]


def log_progress(trainer):
    if trainer.iter_num % 5 == 0:
        print(f"iter_dt {trainer.iter_dt * 1000:.2f}ms; iter {trainer.iter_num}: train loss {trainer.loss.item():.5f}")


def main(argv):
    config = get_config()
    config.merge_from_args(argv)
    set_seed(config.system.seed)
    with open("input.txt") as f:
        dataset = CharDataset(config.data, f.read())
    config.model.vocab_size, config.model.block_size = dataset.get_vocab_size(), dataset.get_block_size()
    trainer = Trainer(config.trainer, GPT(config.model), dataset)
    trainer.set_callback("on_batch_end", log_progress)
    trainer.run()


if __name__ == "__main__":
    main(sys.argv[1:])
