"""Models: the CIFAR zoo (registered in timm on import), projectors, the deployable student."""

from .cifar_zoo import CIFAR100_MEAN, CIFAR100_STD, CIFAR_MODELS
from .configuration_mkcd_student import MKCDStudentConfig
from .helpers import FrozenLinear, create_timm_model
from .modeling_mkcd_student import (
    DistilledImageClassifierOutput,
    MKCDStudentForImageClassification,
    MKCDStudentPreTrainedModel,
)
from .projectors import PROJECTORS, build_projector, count_parameters

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_MODELS",
    "MKCDStudentConfig",
    "MKCDStudentForImageClassification",
    "MKCDStudentPreTrainedModel",
    "DistilledImageClassifierOutput",
    "FrozenLinear",
    "create_timm_model",
    "PROJECTORS",
    "build_projector",
    "count_parameters",
]
