"""Mirrors pytorch/examples word_language_model/main.py (commit 77f55b9): batchify into columns,
bptt slices, the hidden state carried from batch to batch through repackage_hidden() (detach),
NLLLoss over log_softmax, clip_grad_norm_(args.clip), and no torch optimizer: the update is the
hand-written `p.data.add_(p.grad, alpha=-lr)`, with lr annealed /4 when validation stalls.

Injected bug (in expected.yaml): `--model RNN_RELU --clip 1e9`, a ReLU RNN with the clipping the
default lr of 20 relies on switched off; the gradients explode within a few batches and the
hand-written update writes NaN into the weights. The default LSTM with --clip 0.25 is healthy.
"""
import argparse
import math
import time

import torch
import torch.nn as nn

import data
from model import RNNModel

parser = argparse.ArgumentParser(description="word-level RNN language model")
parser.add_argument("--data", type=str, default="./data/tiny")
parser.add_argument("--model", type=str, default="LSTM", help="RNN_TANH, RNN_RELU, LSTM, GRU")
parser.add_argument("--emsize", type=int, default=32)
parser.add_argument("--nhid", type=int, default=32)
parser.add_argument("--nlayers", type=int, default=2)
parser.add_argument("--lr", type=float, default=20)
parser.add_argument("--clip", type=float, default=0.25)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--bptt", type=int, default=10)
parser.add_argument("--dropout", type=float, default=0.2)
parser.add_argument("--seed", type=int, default=1111)
parser.add_argument("--log-interval", type=int, default=5)
args = parser.parse_args()

torch.manual_seed(args.seed)
corpus = data.Corpus(args.data)


def columns(ids, n_columns):
    """Cut the id stream into n_columns equal streams, one per column (the batch dimension)."""
    usable = (ids.numel() // n_columns) * n_columns
    return ids[:usable].view(n_columns, -1).t().contiguous()


def window(source, start):
    length = min(args.bptt, source.size(0) - 1 - start)
    return source[start:start + length], source[start + 1:start + 1 + length].reshape(-1)


def detached(state):
    """Cut the graph at the batch boundary; the values carry over (repackage_hidden)."""
    return state.detach() if isinstance(state, torch.Tensor) else tuple(detached(s) for s in state)


EVAL_COLUMNS = 4
train_stream = columns(corpus.train, args.batch_size)
valid_stream = columns(corpus.valid, EVAL_COLUMNS)
ntokens = len(corpus)
model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
criterion = nn.NLLLoss()


def validation_loss():
    model.eval()
    state = model.init_hidden(EVAL_COLUMNS)
    weighted, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, valid_stream.size(0) - 1, args.bptt):
            inputs, targets = window(valid_stream, start)
            log_probs, state = model(inputs, state)
            weighted += len(inputs) * criterion(log_probs, targets).item()
            count += len(inputs)
    return weighted / count


def train_epoch(epoch, lr):
    model.train()
    state = model.init_hidden(args.batch_size)
    running, tic = 0.0, time.time()
    for batch, start in enumerate(range(0, train_stream.size(0) - 1, args.bptt)):
        inputs, targets = window(train_stream, start)
        state = detached(state)
        model.zero_grad()
        log_probs, state = model(inputs, state)
        loss = criterion(log_probs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)  # plain SGD by hand: there is no optimizer object
        running += loss.item()
        if batch and batch % args.log_interval == 0:
            print(f"| epoch {epoch:3d} | batch {batch:5d} | lr {lr:5.2f} | "
                  f"ms/batch {(time.time() - tic) * 1000 / args.log_interval:5.2f} | loss {running / args.log_interval:5.2f}")
            running, tic = 0.0, time.time()


lr = args.lr
best = None
for epoch in range(1, args.epochs + 1):
    train_epoch(epoch, lr)
    val_loss = validation_loss()
    print(f"| end of epoch {epoch:3d} | valid loss {val_loss:5.2f} | valid ppl {math.exp(min(val_loss, 50)):8.2f}")
    if best is None or val_loss < best:
        best = val_loss
    else:
        lr /= 4.0  # anneal when validation stops improving
