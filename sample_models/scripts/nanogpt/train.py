"""Mirrors karpathy/nanoGPT train.py (commit 3adf61e): module-level config globals overridden by
`exec(open('configurator.py').read())`, a np.memmap get_batch, the next batch fetched *before*
backward, gradient accumulation with loss / accum, GradScaler(enabled=False) around a float32 run,
clip_grad_norm_ after unscale_, cosine lr set by hand on every param group.

Injected bug (in tests/expected.yaml): `--learning_rate=6e1` (meant 6e-4): AdamW moves every weight
by ~60 per step and the loss explodes into NaN within ~10 iterations. Without it the run is healthy.
"""
import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch

from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
out_dir = "out"
eval_interval = 10
eval_iters = 2
log_interval = 1
dataset = "tiny"
gradient_accumulation_steps = 2
batch_size = 4
block_size = 16
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.0
bias = False
learning_rate = 6e-4
max_iters = 20
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
decay_lr = True
warmup_iters = 0
lr_decay_iters = 5000
min_lr = 6e-5
device = "cpu"
dtype = "float32"
seed = 1337
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
exec(open("configurator.py").read())
config = {k: globals()[k] for k in config_keys}
# -----------------------------------------------------------------------------

os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(seed)
device_type = "cuda" if "cuda" in device else "cpu"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = nullcontext() if device_type == "cpu" else torch.autocast(device_type=device_type, dtype=ptdtype)

data_dir = os.path.join("data", dataset)


def get_batch(split):
    # nanoGPT opens a new np.memmap on every call (a workaround for a memmap memory leak)
    tokens = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    starts = torch.randint(len(tokens) - block_size, (batch_size,)).tolist()
    windows = np.stack([tokens[s:s + block_size + 1].astype(np.int64) for s in starts])
    window = torch.from_numpy(windows)
    return window[:, :-1].to(device), window[:, 1:].contiguous().to(device)


with open(os.path.join(data_dir, "vocab_size.txt")) as f:
    vocab_size = int(f.read())

model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                      n_embd=n_embd, dropout=dropout, bias=bias)).to(device)
# a no-op unless dtype is float16, exactly like nanoGPT's `GradScaler(enabled=(dtype == 'float16'))`
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2))


@torch.no_grad()
def split_losses():
    model.eval()
    means = {}
    for split in ("train", "val"):
        total = 0.0
        for _ in range(eval_iters):
            inputs, targets = get_batch(split)
            with ctx:
                total += model(inputs, targets)[1].item()
        means[split] = total / eval_iters
    model.train()
    return means


def lr_schedule(step):
    """Linear warmup, then cosine from learning_rate down to min_lr at lr_decay_iters."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    progress = min(1.0, (step - warmup_iters) / max(1, lr_decay_iters - warmup_iters))
    return min_lr + (learning_rate - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


step = 0
X, Y = get_batch("train")
last = time.time()
while step <= max_iters:
    lr = lr_schedule(step) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr

    if step % eval_interval == 0:
        means = split_losses()
        print(f"step {step}: train loss {means['train']:.4f}, val loss {means['val']:.4f}")

    for micro_step in range(gradient_accumulation_steps):
        with ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        X, Y = get_batch("train")  # fetched before backward, as nanoGPT overlaps it with the GPU
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    now = time.time()
    if step % log_interval == 0:
        print(f"iter {step}: loss {loss.item() * gradient_accumulation_steps:.4f}, time {(now - last) * 1000:.2f}ms")
    last = now
    step += 1
