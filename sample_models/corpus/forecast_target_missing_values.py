# Source: https://github.com/Nixtla/neuralforecast/issues/186
# Mechanism: a forecasting dataset whose target column has missing values, read as NaN. The first 40 windows are
# complete; the window at step 41 holds a NaN target, so the MSE is NaN and every gradient with it. The model
# and its inputs are finite. Fails only after step 30.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 6))


def get_batch(step):
    t = torch.arange(30, dtype=torch.float32) + step
    series = torch.sin(t / 4).repeat(16, 1) + 0.05 * torch.randn(16, 30)
    if step == 41:
        series[7, 27] = float("nan")           # a missing value in the target horizon  # nandoctor: origin
    return series[:, :24], series[:, 24:]
