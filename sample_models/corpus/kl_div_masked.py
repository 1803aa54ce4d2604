# Source: https://github.com/google-deepmind/optax/pull/1786
# Mechanism: distillation with F.kl_div on student log-probs from masked logits; a zero teacher probability times a -inf log-prob is 0 * inf = NaN.
import torch
from torch import nn


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(10, 12)

    def forward(self, x, allowed):
        logits = self.net(x).masked_fill(~allowed, float("-inf"))
        return torch.log_softmax(logits, dim=-1)


def build_model():
    return Student()


def get_batch(step):
    x = torch.randn(16, 10)
    allowed = torch.rand(16, 12) > 0.3
    allowed[:, 0] = True
    teacher = torch.softmax(torch.randn(16, 12), dim=-1) * allowed
    teacher = teacher / teacher.sum(-1, keepdim=True)
    return (x, allowed), teacher


def loss_fn(student_logp, teacher_probs):
    return nn.functional.kl_div(student_logp, teacher_probs, reduction="batchmean")  # nandoctor: origin
