"""The distiller zoo: one file per method, registered by name (``--method``).

Every module of this package but the shared ones is imported here, so a method's ``@register_distiller`` runs:
a new method is its file, nothing else to edit.
"""

import importlib
import pkgutil

from .base import DISTILLERS, Distiller, Pair, Step, get_distiller_class, list_distillers, register_distiller
from .losses import feature_mse, kd_loss
from .temperature import DEFAULT_TEMPERATURE, TEMPERATURE_SCHEDULES, Temperature, build_temperature

SHARED_MODULES = {"base", "losses", "temperature"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in SHARED_MODULES:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "DISTILLERS",
    "Distiller",
    "Pair",
    "Step",
    "get_distiller_class",
    "list_distillers",
    "register_distiller",
    "kd_loss",
    "feature_mse",
    "DEFAULT_TEMPERATURE",
    "TEMPERATURE_SCHEDULES",
    "Temperature",
    "build_temperature",
]
