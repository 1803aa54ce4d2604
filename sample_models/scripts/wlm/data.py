"""A word-level corpus: one vocabulary grown over train, valid and test (in that order), each
split flattened into one tensor of ids with an <eos> after every line."""
from pathlib import Path

import torch


class Corpus:
    def __init__(self, folder):
        self.vocab: dict[str, int] = {}
        self.train, self.valid, self.test = (self._ids(Path(folder) / f"{name}.txt")
                                             for name in ("train", "valid", "test"))

    def _ids(self, path):
        words = [w for line in path.read_text(encoding="utf8").splitlines() for w in line.split() + ["<eos>"]]
        return torch.tensor([self.vocab.setdefault(w, len(self.vocab)) for w in words], dtype=torch.int64)

    def __len__(self):
        return len(self.vocab)
