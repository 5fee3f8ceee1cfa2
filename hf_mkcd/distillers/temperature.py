"""Temperature schedules: map training progress (0 -> 1) to the distillation temperature.

Deterministic schedules are derived from the Trainer state (``global_step / max_steps``), so a
resumed run sees exactly the temperatures of an uninterrupted one. CTKD's learned adversarial
temperature (a module with a parameter) comes with the distiller zoo.
"""
from __future__ import annotations

import math
from typing import Dict, Type


class TemperatureSchedule:
    """``schedule(progress) -> temperature``; ``progress`` in [0, 1]."""

    def __init__(self, temperature: float = 4.0, temperature_min: float = 1.0, temperature_max: float = 8.0):
        if min(temperature, temperature_min, temperature_max) <= 0:
            raise ValueError("temperatures must be > 0")
        if temperature_min > temperature_max:
            raise ValueError(f"temperature_min ({temperature_min}) > temperature_max ({temperature_max})")
        self.temperature, self.t_min, self.t_max = temperature, temperature_min, temperature_max

    def __call__(self, progress: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.temperature}, min={self.t_min}, max={self.t_max})"


class Constant(TemperatureSchedule):
    def __call__(self, progress: float) -> float:
        return float(self.temperature)


class _Ramp(TemperatureSchedule):
    rising = True

    def shape(self, p: float) -> float:  # 0 -> 1
        raise NotImplementedError

    def __call__(self, progress: float) -> float:
        p = min(max(float(progress), 0.0), 1.0)
        s = self.shape(p) if self.rising else 1.0 - self.shape(p)
        return self.t_min + (self.t_max - self.t_min) * s


class LinearRising(_Ramp):
    def shape(self, p):
        return p


class LinearFalling(LinearRising):
    rising = False


class CosineRising(_Ramp):
    def shape(self, p):
        return (1.0 - math.cos(math.pi * p)) / 2.0


class CosineFalling(CosineRising):
    rising = False


TEMPERATURE_SCHEDULES: Dict[str, Type[TemperatureSchedule]] = {
    "constant": Constant,
    "linear_rising": LinearRising,
    "linear_falling": LinearFalling,
    "cosine_rising": CosineRising,
    "cosine_falling": CosineFalling,
}


LEARNED_SCHEDULES = ("ctkd",)  # a module with parameters, trained with the student (distillers/ctkd.py)


def build_temperature_schedule(name: str, **kwargs) -> TemperatureSchedule:
    if name not in TEMPERATURE_SCHEDULES and name not in LEARNED_SCHEDULES:
        raise ValueError(f"unknown temperature schedule {name!r}; choose one of "
                         f"{sorted(TEMPERATURE_SCHEDULES) + list(LEARNED_SCHEDULES)}")
    if name == "ctkd":
        from .ctkd import LearnableTemperature

        return LearnableTemperature()
    return TEMPERATURE_SCHEDULES[name](**kwargs)
