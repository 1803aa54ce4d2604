"""Mirrors huggingface/accelerate examples/nlp_example.py (commit 16cb6eb): Accelerator(cpu=...,
mixed_precision=...), sentence pairs tokenized and padded per batch to the longest pair (a multiple
of 8 under mixed precision), a BERT sequence classifier, AdamW with a linear warm-up, everything
through accelerator.prepare, accelerator.backward(loss), an accuracy print per epoch. The model is
built from a tiny config and the tokenizer is a word list, so nothing comes from the Hub.

What it exercises (healthy, `--mixed_precision bf16 --cpu`): Accelerate applies autocast inside
the prepared model's forward (`model.forward = autocast(forward)`), so only code running inside
that forward sees bfloat16; and BERT's position table has 64 rows while batches use at most 24
positions, so most rows never receive a gradient (Adam's moments stay exactly zero there).
"""
import argparse
import random

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.optim import AdamW
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

WORDS = "the a cat dog sat ran on to mat house big small red blue old new bird fish saw ate".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
VOCAB = {w: i for i, w in enumerate(SPECIAL + WORDS)}


def make_pairs(n: int, seed: int) -> list[dict]:
    """Sentence pairs labelled 1 when both sentences start with the same word (learnable)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        first = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        same = rng.random() < 0.5
        head = first[0] if same else rng.choice([w for w in WORDS if w != first[0]])
        second = [head] + [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        ids = [VOCAB["[CLS]"], *(VOCAB[w] for w in first), VOCAB["[SEP]"], *(VOCAB[w] for w in second), VOCAB["[SEP]"]]
        types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        pairs.append({"input_ids": ids, "token_type_ids": types, "labels": int(same)})
    return pairs


def get_dataloaders(accelerator: Accelerator, batch_size: int):
    def collate_fn(examples):
        # Under mixed precision, pad to a multiple of 8 (as the example does for tensor cores).
        multiple = 8 if accelerator.mixed_precision != "no" else 1
        longest = max(len(e["input_ids"]) for e in examples)
        length = -(-longest // multiple) * multiple
        pad = lambda seq: seq + [0] * (length - len(seq))
        return {"input_ids": torch.tensor([pad(e["input_ids"]) for e in examples]),
                "token_type_ids": torch.tensor([pad(e["token_type_ids"]) for e in examples]),
                "attention_mask": torch.tensor([pad([1] * len(e["input_ids"])) for e in examples]),
                "labels": torch.tensor([e["labels"] for e in examples])}

    train = DataLoader(make_pairs(64, 0), shuffle=True, collate_fn=collate_fn, batch_size=batch_size, drop_last=True)
    evaluation = DataLoader(make_pairs(32, 1), shuffle=False, collate_fn=collate_fn, batch_size=32)
    return train, evaluation


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    set_seed(config["seed"])
    train_dataloader, eval_dataloader = get_dataloaders(accelerator, config["batch_size"])
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64))
    model = model.to(accelerator.device)
    optimizer = AdamW(params=model.parameters(), lr=config["lr"])
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer=optimizer, num_warmup_steps=100, num_training_steps=len(train_dataloader) * config["num_epochs"])
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler)

    for epoch in range(config["num_epochs"]):
        model.train()
        for batch in train_dataloader:
            outputs = model(**batch)
            accelerator.backward(outputs.loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        model.eval()
        correct = total = 0
        for batch in eval_dataloader:
            with torch.no_grad():
                predictions = model(**batch).logits.argmax(dim=-1)
            predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
            correct += int((predictions == references).sum())
            total += len(references)
        accelerator.print(f"epoch {epoch}: {{'accuracy': {correct / total:.3f}}}")
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Simple example of training script.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16", "fp8"])
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    args = parser.parse_args()
    config = {"lr": 2e-5, "num_epochs": 3, "seed": 42, "batch_size": 16}
    training_function(config, args)


if __name__ == "__main__":
    main()
