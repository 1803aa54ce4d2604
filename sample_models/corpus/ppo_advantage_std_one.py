# Source: https://github.com/DLR-RM/stable-baselines3/issues/325
# Mechanism: PPO normalises advantages per minibatch with (adv - mean) / (std + 1e-8); a rollout of 65 transitions
# split into minibatches of 16 leaves a last minibatch of one sample, whose unbiased std is 0/0 = NaN.
import torch
from torch import nn

ROLLOUT = 65
MINIBATCH = 16


class ActorCritic(nn.Module):
    def __init__(self, obs_dim=8, n_actions=4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.pi = nn.Linear(64, n_actions)
        self.v = nn.Linear(64, 1)

    def forward(self, obs):
        h = self.body(obs)
        return self.pi(h), self.v(h).squeeze(-1)


def build_model():
    return ActorCritic()


_g = torch.Generator().manual_seed(1)
_OBS = torch.randn(ROLLOUT, 8, generator=_g)
_ACT = torch.randint(0, 4, (ROLLOUT,), generator=_g)
_OLD_LOGP = torch.log(torch.full((ROLLOUT,), 0.25))
_ADV = torch.randn(ROLLOUT, generator=_g) * 2.0
_RET = torch.randn(ROLLOUT, generator=_g)


def get_batch(step):
    n_mb = (ROLLOUT + MINIBATCH - 1) // MINIBATCH
    i = step % n_mb
    sl = slice(i * MINIBATCH, (i + 1) * MINIBATCH)
    return _OBS[sl], {"actions": _ACT[sl], "old_logp": _OLD_LOGP[sl], "adv": _ADV[sl], "returns": _RET[sl]}


def loss_fn(outputs, batch, clip=0.2, vf_coef=0.5):
    logits, values = outputs
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # nandoctor: origin
    logp = torch.log_softmax(logits, -1).gather(1, batch["actions"][:, None]).squeeze(1)
    ratio = torch.exp(logp - batch["old_logp"])
    policy = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    return policy + vf_coef * (values - batch["returns"]).pow(2).mean()
