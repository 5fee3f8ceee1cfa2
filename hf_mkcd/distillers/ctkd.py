"""``ctkd``: Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023), as
``zhengli97/CTKD`` (``models/temp_global.py``, ``train_student.py``).

A learnable global temperature tau = t_start + t_range * sigmoid(theta) (tau in (1, 21), theta = 1 at
start: tau ~ 15.6) is trained *adversarially*: theta's gradient passes a gradient-reversal layer scaled
by lambda, which follows a cosine ramp from 0 to -1 over the first 10 epochs (``CosineDecay``, epochs
counted from 1), so theta learns to *maximise* the distillation loss, easy to hard.

``--method ctkd`` is KD (CE 0.1 + KD 0.9) with this temperature; ``--temperature_schedule ctkd`` gives
the same temperature to any method that uses one (kd, dkd, mkcd, dist, srrl).
"""
import math

import torch
import torch.nn as nn

from .base import register_distiller
from .kd import KD


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def ctkd_lambda(epoch: float, decay_epochs: float = 10.0, lambda_max: float = 0.0, lambda_min: float = -1.0) -> float:
    """CTKD's ``CosineDecay``: lambda goes from ``lambda_max`` to ``lambda_min`` over ``decay_epochs``."""
    e = min(math.floor(epoch) + 1, decay_epochs)
    return (math.cos(math.pi * e / decay_epochs) + 1) / 2 * (lambda_max - lambda_min) + lambda_min


class LearnableTemperature(nn.Module):
    """tau = t_start + t_range * sigmoid(GRL_lambda(theta)); a module, so optimizer, DDP and checkpoints see it."""

    def __init__(self, t_start: float = 1.0, t_range: float = 20.0, theta_init: float = 1.0, decay_epochs: float = 10.0):
        super().__init__()
        self.t_start, self.t_range, self.decay_epochs = t_start, t_range, decay_epochs
        self.theta = nn.Parameter(torch.tensor(float(theta_init)))

    def forward(self, epoch: float = 0.0) -> torch.Tensor:
        theta = GradientReversal.apply(self.theta, ctkd_lambda(epoch, self.decay_epochs))
        return self.t_start + self.t_range * torch.sigmoid(theta)


@register_distiller("ctkd")
class CTKD(KD):
    """KD with CTKD's learned temperature (the trainer attaches it as ``temperature_module``)."""

    learned_temperature = True
