# Source: https://github.com/sanghyun-son/EDSR-PyTorch/issues/36
# Mechanism: a super-resolution L1 loss summed over all pixels of 0-255 images exceeds float16's 65504 in pure half precision: inf loss.
import torch
from torch import nn


class SR(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, lr_img):
        up = nn.functional.interpolate(lr_img, scale_factor=2, mode="nearest")
        return up + self.body(up)


def build_model():
    return SR()


def get_batch(step):
    hr = torch.rand(4, 3, 16, 16) * 255.0
    lr_img = nn.functional.avg_pool2d(hr, 2)
    return lr_img, hr


def loss_fn(sr, hr):
    return (sr - hr).abs().sum() / sr.shape[0]  # nandoctor: origin
