# Source: https://github.com/anindita127/IMoS/issues/9
# Mechanism: a contact loss averages over frames selected by a boolean flag; when no frame is selected, mean of an empty tensor is NaN.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 6))


def get_batch(step):
    x = torch.randn(40, 12)
    contact = torch.rand(40) < 0.3
    if step == 5:
        contact[:] = False    # a sequence in which the hand never touches the object
    return x, (torch.randn(40, 6), contact)


def loss_fn(pred, targets):
    target, contact = targets
    pose = nn.functional.mse_loss(pred, target)
    finger = ((pred[contact] - target[contact]) ** 2).mean()  # nandoctor: origin
    return pose + 0.5 * finger
