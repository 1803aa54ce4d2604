"""Mirrors Lightning-AI/pytorch-lightning examples/pytorch/basics/transformer.py (commit 7f0c343):
a LightningModule that does NOT call save_hyperparameters() and wraps lightning's demo
Transformer (nn.Transformer with -inf causal masks, log_softmax output), F.nll_loss in
training_step, configure_optimizers returning SGD(lr=0.1), random_split DataLoaders, and
L.Trainer(gradient_clip_val=0.25). A small word file stands in for WikiText2 (no download).

Healthy: nothing injected. The deliberate -inf masks must not be reported; the run must pass.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, random_split

import lightning as L
from lightning.pytorch.demos import Transformer


class WordBlocks(Dataset):
    def __init__(self, path, block_size=8):
        words = open(path).read().split()
        self.vocab = {w: i for i, w in enumerate(sorted(set(words)))}
        self.data = torch.tensor([self.vocab[w] for w in words], dtype=torch.long)
        self.block_size = block_size

    @property
    def vocab_size(self):
        return len(self.vocab)

    def __len__(self):
        return len(self.data) // self.block_size - 1

    def __getitem__(self, index):
        start = index * self.block_size
        end = start + self.block_size
        return self.data[start:end], self.data[start + 1:end + 1]


class LanguageModel(L.LightningModule):
    """No save_hyperparameters(): the vocabulary size is only an __init__ argument."""

    def __init__(self, vocab_size):
        super().__init__()
        self.model = Transformer(vocab_size=vocab_size, ninp=16, nhead=2, nhid=16, nlayers=1, dropout=0.1)

    def nll(self, batch):
        tokens, next_tokens = batch
        return F.nll_loss(self.model(tokens, next_tokens), next_tokens.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self.nll(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.nll(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="data/words.txt")
    parser.add_argument("--max_epochs", type=int, default=2)
    args = parser.parse_args()
    L.seed_everything(42)
    dataset = WordBlocks(args.data)
    n = len(dataset)
    train_dataset, test_dataset = random_split(dataset, [n - 10, 10])
    model = LanguageModel(vocab_size=dataset.vocab_size)
    trainer = L.Trainer(accelerator="cpu", gradient_clip_val=0.25, max_epochs=args.max_epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(train_dataset, batch_size=8, shuffle=True))
    print(trainer.test(model, DataLoader(test_dataset, batch_size=8), verbose=False))


if __name__ == "__main__":
    main()
