"""Mirrors huggingface/transformers examples/pytorch/language-modeling/run_clm.py (commit 00d481d):
HfArgumentParser over (ModelArguments, DataTrainingArguments, TrainingArguments), a causal LM built
from a config (GPT-2, no download), a local text file tokenized and grouped into blocks with
labels = input_ids, default_data_collator, Trainer(...).train(), save_model(). The tokenizer is a
character vocabulary of the file, so nothing comes from the Hub.

Injected bug (in expected.yaml): `--adam_epsilon 0`. The attention key bias gets an exactly zero
gradient (softmax ignores a shift shared by a whole row), so AdamW's exp_avg / (sqrt(exp_avg_sq) + 0)
is 0/0 = NaN at the first update; every later loss is NaN, which the Trainer's NaN filter hides.
"""
import logging
import sys
from dataclasses import dataclass, field
from itertools import chain

import torch
import transformers
from transformers import (GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments,
                          default_data_collator, set_seed)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    n_layer: int = field(default=2, metadata={"help": "transformer blocks"})
    n_head: int = field(default=2, metadata={"help": "attention heads"})
    n_embd: int = field(default=32, metadata={"help": "embedding width"})


@dataclass
class DataTrainingArguments:
    train_file: str = field(default="data/train.txt", metadata={"help": "a text file, one example a line"})
    block_size: int = field(default=32, metadata={"help": "tokens per training sequence"})


class CharDataset(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        ids = torch.tensor(self.blocks[i], dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)], level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    with open(data_args.train_file) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    vocab = sorted(set("".join(lines)) | {"\n"})
    stoi = {ch: i for i, ch in enumerate(vocab)}
    ids = list(chain(*([stoi[c] for c in line + "\n"] for line in lines)))
    block_size = data_args.block_size
    total = (len(ids) // block_size) * block_size
    train_dataset = CharDataset([ids[i:i + block_size] for i in range(0, total, block_size)])
    logger.info(f"{len(train_dataset)} blocks of {block_size} characters, vocabulary {len(vocab)}")

    config = GPT2Config(vocab_size=len(vocab), n_positions=block_size, n_layer=model_args.n_layer,
                        n_head=model_args.n_head, n_embd=model_args.n_embd, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)

    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset,
                      data_collator=default_data_collator)
    train_result = trainer.train()
    trainer.save_model()
    metrics = train_result.metrics
    trainer.log_metrics("train", metrics)


if __name__ == "__main__":
    main()
