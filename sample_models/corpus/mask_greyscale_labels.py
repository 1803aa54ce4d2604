# Source: https://github.com/milesial/Pytorch-UNet/issues/291
# Mechanism: binary segmentation with CrossEntropyLoss over 2 classes, but the masks are loaded as raw greyscale
# PNG values (0 and 255) instead of class indices (0 and 1): target 255 is outside [0, 2). On CPU cross_entropy
# raises "Target 255 is out of bounds"; on CUDA it is a device-side assert.
import torch
import torch.nn.functional as F
from torch import nn


def conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class MiniUNet(nn.Module):
    def __init__(self, n_channels=3, n_classes=2):
        super().__init__()
        self.inc = conv_block(n_channels, 16)
        self.down = nn.Sequential(nn.MaxPool2d(2), conv_block(16, 32))
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = conv_block(32, 16)
        self.outc = nn.Conv2d(16, n_classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down(x1)
        return self.outc(self.dec(torch.cat([x1, self.up(x2)], 1)))


def build_model():
    return MiniUNet()


def get_batch(step):
    images = torch.rand(2, 3, 32, 32)
    png = (torch.rand(2, 32, 32) > 0.7).to(torch.uint8) * 255   # what Image.open(mask_path) gives for a 0/255 mask
    masks = torch.as_tensor(png, dtype=torch.long)              # the loader forgot `mask = mask // 255`
    return images, masks


def loss_fn(logits, masks):
    return F.cross_entropy(logits, masks)  # nandoctor: origin
