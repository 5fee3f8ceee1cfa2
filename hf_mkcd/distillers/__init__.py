"""The distiller zoo: one file per method, registered by name (``--method``)."""
from . import ab, at, crd, ctkd, dist, dkd, fitnet, kd, mkcd, mlkd, none, ofd, reviewkd, rkd, simkd, sp, srrl  # noqa: F401  (registration)
from .base import DISTILLERS, Distiller, Pair, Step, get_distiller_class, list_distillers, register_distiller
from .losses import feature_mse, kd_loss
from .temperature import DEFAULT_TEMPERATURE, TEMPERATURE_SCHEDULES, Temperature, build_temperature

__all__ = [
    "DISTILLERS", "Distiller", "Pair", "Step", "get_distiller_class", "list_distillers", "register_distiller",
    "kd_loss", "feature_mse", "DEFAULT_TEMPERATURE", "TEMPERATURE_SCHEDULES", "Temperature", "build_temperature",
]
