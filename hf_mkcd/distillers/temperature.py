"""Temperature schedules: one interface for fixed and learned temperatures.

Every schedule is an ``nn.Module`` called as ``temperature(step)`` (a :class:`~hf_mkcd.distillers.base.Step`)
and owned by the distiller that uses it, so a learned temperature (CTKD) is trained, synchronised
and checkpointed with the method's other modules, and a fixed one simply has no state.

* ``constant``: T (default :data:`DEFAULT_TEMPERATURE` = 4, the CIFAR value of KD, DKD, DIST, ...).
* ``linear_rising`` / ``linear_falling`` / ``cosine_rising`` / ``cosine_falling``: between
  ``temperature_min`` and ``temperature_max`` over training progress (``global_step / max_steps``),
  so a resumed run sees exactly the temperatures of an uninterrupted one.
* ``ctkd``: Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023):
  tau = 1 + 20 * sigmoid(theta), theta learnable (1 at start: tau ~ 15.6), trained *adversarially*
  through a gradient-reversal layer whose scale lambda follows a cosine ramp from 0 to -1 over the
  first 10 epochs (epochs counted from 1), so theta learns to maximise the distillation loss.
"""

from __future__ import annotations

import math
from typing import Dict, Type

import torch
import torch.nn as nn

DEFAULT_TEMPERATURE = 4.0


class Temperature(nn.Module):
    """``temperature(step) -> float | tensor``."""

    def forward(self, step) -> float:
        raise NotImplementedError


class Constant(Temperature):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, **_):
        super().__init__()
        _check_positive(temperature=temperature)
        self.value = float(temperature)

    def forward(self, step) -> float:
        return self.value

    def extra_repr(self) -> str:
        return f"T={self.value}"


class Ramp(Temperature):
    """From ``temperature_min`` to ``temperature_max`` (rising) or back (falling) over training progress."""

    rising = True

    def __init__(self, temperature_min: float = 1.0, temperature_max: float = 8.0, **_):
        super().__init__()
        _check_positive(temperature_min=temperature_min, temperature_max=temperature_max)
        if temperature_min > temperature_max:
            raise ValueError(f"temperature_min ({temperature_min}) > temperature_max ({temperature_max})")
        self.t_min, self.t_max = float(temperature_min), float(temperature_max)

    def shape(self, p):  # 0 -> 1 over progress 0 -> 1 (a float, or a tensor on the device)
        raise NotImplementedError

    def forward(self, step):
        """In training ``step.progress`` is a tensor on the device: the schedule is computed there, so a step
        neither reads the host nor gives a compiled graph a new constant (which recompiled it every step)."""
        p = step.progress
        p = p.clamp(0.0, 1.0) if torch.is_tensor(p) else min(max(float(p), 0.0), 1.0)
        s = self.shape(p) if self.rising else 1.0 - self.shape(p)
        return self.t_min + (self.t_max - self.t_min) * s

    def extra_repr(self) -> str:
        return f"min={self.t_min}, max={self.t_max}"


class LinearRising(Ramp):
    def shape(self, p):
        return p


class LinearFalling(LinearRising):
    rising = False


class CosineRising(Ramp):
    def shape(self, p):
        return (1.0 - (torch.cos(math.pi * p) if torch.is_tensor(p) else math.cos(math.pi * p))) / 2.0


class CosineFalling(CosineRising):
    rising = False


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def ctkd_lambda(epoch: int, decay_epochs: float = 10.0, lambda_max: float = 0.0, lambda_min: float = -1.0) -> float:
    """CTKD's ``CosineDecay`` at the 1-based ``epoch``: lambda goes from ``lambda_max`` to ``lambda_min``
    over ``decay_epochs`` epochs, then stays there."""
    e = min(float(epoch), decay_epochs)
    return (math.cos(math.pi * e / decay_epochs) + 1) / 2 * (lambda_max - lambda_min) + lambda_min


class CTKDTemperature(Temperature):
    """tau = t_start + t_range * sigmoid(GRL_lambda(theta))."""

    def __init__(
        self, t_start: float = 1.0, t_range: float = 20.0, theta_init: float = 1.0, decay_epochs: float = 10.0, **_
    ):
        super().__init__()
        self.t_start, self.t_range, self.decay_epochs = t_start, t_range, decay_epochs
        self.theta = nn.Parameter(torch.tensor(float(theta_init)))

    def forward(self, step) -> torch.Tensor:
        theta = GradientReversal.apply(self.theta, ctkd_lambda(step.epoch, self.decay_epochs))
        return self.t_start + self.t_range * torch.sigmoid(theta)


TEMPERATURE_SCHEDULES: Dict[str, Type[Temperature]] = {
    "constant": Constant,
    "linear_rising": LinearRising,
    "linear_falling": LinearFalling,
    "cosine_rising": CosineRising,
    "cosine_falling": CosineFalling,
    "ctkd": CTKDTemperature,
}


def build_temperature(
    name: str, temperature: float = DEFAULT_TEMPERATURE, temperature_min: float = 1.0, temperature_max: float = 8.0
) -> Temperature:
    if name not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"unknown temperature schedule {name!r}; choose one of {sorted(TEMPERATURE_SCHEDULES)}")
    return TEMPERATURE_SCHEDULES[name](
        temperature=temperature, temperature_min=temperature_min, temperature_max=temperature_max
    )


def _check_positive(**values) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v}")
