# Source: https://github.com/tensorflow/models/pull/181
# Mechanism: a hand-written cross-entropy -log(softmax(z)[y]). The loader normalises every sample except the
# ones of one shard, which arrive as raw 16-bit sensor counts (x1000); at step 33 such a sample appears twice,
# with conflicting labels. Its logits differ by hundreds, so float32 softmax gives exactly 0 to one of the
# labels and log(0) = -inf: the loss is inf only after step 30. F.cross_entropy (log_softmax) stays finite.
import torch
from torch import nn


def build_model():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))


def get_batch(step):
    x = torch.randn(32, 16)
    y = (x[:, 0] + x[:, 1] > 0).long()
    if step == 33:
        raw = torch.randn(1, 16) * 1000.0      # not normalised
        x[:2] = raw
        y[0], y[1] = 0, 1                      # the same record, labelled twice
    return x, y


def loss_fn(logits, labels):
    probs = torch.softmax(logits, dim=1)
    return -torch.log(probs.gather(1, labels[:, None])).mean()  # nandoctor: origin
