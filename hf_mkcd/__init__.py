"""hf_mkcd: knowledge distillation of image classifiers, Hugging Face-native.

    from hf_mkcd import DistillationTrainer, DistillationTrainingArguments, list_distillers

Importing the package registers the CIFAR model zoo in timm (``timm.list_models("cifar_*")``) and
the ``mkcd_student`` model type with ``AutoConfig`` / ``AutoModelForImageClassification``.
"""

from transformers import AutoConfig, AutoModelForImageClassification

from .distillers import Distiller, get_distiller_class, list_distillers, register_distiller
from .hub import HubUnavailableError
from .loading import CheckpointError, load_state_dict_file, load_teacher
from .models import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_MODELS,
    MKCDStudentConfig,
    MKCDStudentForImageClassification,
    build_projector,
    count_parameters,
    create_timm_model,
)

from .trainer import DistillationTrainer, DistillationTrainingArguments

__version__ = "0.1.0"

AutoConfig.register(MKCDStudentConfig.model_type, MKCDStudentConfig, exist_ok=True)
AutoModelForImageClassification.register(MKCDStudentConfig, MKCDStudentForImageClassification, exist_ok=True)
# save_pretrained also writes the model code (+ auto_map), so a saved student loads with
# trust_remote_code=True where hf_mkcd is not installed.
MKCDStudentConfig.register_for_auto_class()
MKCDStudentForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "Distiller",
    "register_distiller",
    "list_distillers",
    "get_distiller_class",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_MODELS",
    "MKCDStudentConfig",
    "MKCDStudentForImageClassification",
    "build_projector",
    "count_parameters",
    "create_timm_model",
    "load_teacher",
    "load_state_dict_file",
    "CheckpointError",
    "HubUnavailableError",
]
