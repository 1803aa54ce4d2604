# Source: https://github.com/neuronets/nobrainer/issues/8
# Mechanism: a soft Dice loss 2|P*T| / (|P| + |T|) computed over each patch's valid (non-padded) region, with no
# smoothing term. At step 34 a patch from the volume's border is entirely padding: the valid mask is all zero,
# so numerator and denominator are both 0 and the loss is 0 / 0 = NaN. Fails only after step 30.
import torch
from torch import nn


class TinySegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, x):
        return torch.sigmoid(self.net(x))


def build_model():
    return TinySegNet()


def get_batch(step):
    image = torch.randn(4, 1, 16, 16)
    target = (image > 0.5).float()
    valid = torch.ones(4, 1, 16, 16)
    if step == 34:
        valid[2] = 0.0                         # a patch cut entirely from the padded border
    return image, (target, valid)


def loss_fn(probs, target_valid):
    target, valid = target_valid
    p, t = probs * valid, target * valid
    inter = (p * t).sum(dim=(1, 2, 3))
    denom = p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))
    return (1 - 2 * inter / denom).mean()  # nandoctor: origin
