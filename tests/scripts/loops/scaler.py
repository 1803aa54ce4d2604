"""Mixed precision with a GradScaler: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()."""
import argparse
import torch
from net import Net, batch

parser = argparse.ArgumentParser()
parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
dtype = getattr(torch, parser.parse_args().dtype)
torch.manual_seed(0)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
for step in range(6):
    x, y = batch(step)
    with torch.autocast("cpu", dtype=dtype):
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
    opt.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
