# Source: https://github.com/leaderj1001/BottleneckTransformers/issues/18
# Healthy: segmentation with batch size 1 and BatchNorm2d in training mode. Statistics are taken over N*H*W = 1*32*32
# values per channel, so a single image is fine; only a 1x1 spatial map (as in the report's pooled branch) would fail.
import torch
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinySegNet(nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.enc = nn.Sequential(block(3, 16), block(16, 16))
        self.down = nn.Sequential(nn.MaxPool2d(2), block(16, 32))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = block(48, 16)
        self.out = nn.Conv2d(16, n_classes, 1)

    def forward(self, x):
        e = self.enc(x)
        d = self.up(self.down(e))
        return self.out(self.dec(torch.cat([e, d], 1)))


def build_model():
    return TinySegNet()


def get_batch(step):
    return torch.rand(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))   # high-resolution crops: one per batch
