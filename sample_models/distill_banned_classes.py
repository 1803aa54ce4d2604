"""Distilling a teacher into a student whose output is restricted to the allowed classes.

The student masks the classes it may not predict with -inf before log_softmax, which is fine
on its own. The hand-written distillation loss then multiplies the teacher's probabilities
by the student's log-probabilities: where the teacher gives 0 to a banned class, 0 * -inf is
NaN.
"""
import torch
from torch import nn


class Student(nn.Module):
    def __init__(self, d=16, classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x, allowed):
        logits = self.net(x).masked_fill(~allowed, float("-inf"))
        return torch.log_softmax(logits, dim=-1)


def build_model():
    return Student()


def get_batch(step):
    x = torch.randn(32, 16)
    allowed = torch.ones(32, 10, dtype=torch.bool)
    allowed[:, 7:] = False                       # classes 7-9 are retired
    teacher = torch.softmax(torch.randn(32, 10), dim=-1) * allowed
    teacher = teacher / teacher.sum(-1, keepdim=True)
    return (x, allowed), teacher


def loss_fn(student_logp, teacher_probs):
    return -(teacher_probs * student_logp).sum(dim=-1).mean()
