"""What ``scripts/distill.py`` and ``scripts/train_teacher.py`` run: parse, build, train, save.

Config precedence: dataclass defaults < a YAML/JSON file given as the first argument < command-line
flags; unknown keys are refused; the resolved config is written to ``<output_dir>/run_config.yaml``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import yaml
from timm.models import get_pretrained_cfg_value
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .data import DataArguments, prepare_datasets
from .distillers import get_distiller_class
from .loading import load_teacher
from .models import MKCDStudentConfig, MKCDStudentForImageClassification
from .models.helpers import check_num_classes, check_timm_name, first_conv_in_channels, teacher_linear_head
from .trainer import DistillationTrainer, DistillationTrainingArguments

logger = logging.getLogger("hf_mkcd")
TIMM_EXPORT_DIR = "timm"  # <output_dir>/timm: a trained classifier as timm.create_model("local-dir:...") reads it


@dataclass
class ModelArguments:
    """The student (``model_name_or_path``: a timm / CIFAR-zoo architecture) and, for distillation, the teacher.

    The projector and head default to the method's own; the projector options left unset take the
    projector's defaults (``hf_mkcd.models.projectors.projector_options``), and one the projector does
    not take is refused.
    """

    model_name_or_path: str = field(default="cifar_resnet8x4", metadata={"help": "timm architecture of the student (e.g. cifar_resnet8x4, resnet18)."})
    teacher_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Teacher: a saved directory, a timm / CIFAR-zoo name (with --teacher_checkpoint) or a Hub id."})
    teacher_checkpoint: Optional[str] = field(default=None, metadata={"help": "Teacher weights for a timm name: community .pth ('model'/'state_dict') or .safetensors."})
    projector: Optional[str] = field(default=None, metadata={"help": "Student projector: mkcd, simkd, identity, srrl, or none (default: the method's)."})
    head: Optional[str] = field(default=None, metadata={"help": "Student head: teacher (the teacher's frozen classifier) or student (default: the method's)."})
    projector_factor: Optional[int] = field(default=None, metadata={"help": "mkcd/simkd projector width: m = C_teacher / factor (default 2)."})
    projector_latent_ratio: Optional[int] = field(default=None, metadata={"help": "mkcd projector latent: m / ratio channels (default 2)."})
    projector_skip: Optional[bool] = field(default=None, metadata={"help": "mkcd projector: add a 1x1 skip connection (default false)."})

    def projector_kwargs(self) -> dict:
        """The projector options set by the user (unset ones keep the projector's own defaults)."""
        given = {"factor": self.projector_factor, "latent_ratio": self.projector_latent_ratio, "skip": self.projector_skip}
        return {k: v for k, v in given.items() if v is not None}


def parse_args(dataclass_types, argv: Optional[Sequence[str]] = None):
    """Defaults < YAML/JSON file (first argument) < CLI flags; unknown keys raise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    file_args = []
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        with open(argv.pop(0)) as f:
            config = yaml.safe_load(f) or {}
        if not isinstance(config, dict):
            raise ValueError("a recipe file must hold a mapping of argument names to values")
        for key, value in config.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                file_args += [f"--{key}", *map(str, value)]
            elif isinstance(value, dict):
                file_args += [f"--{key}", json.dumps(value)]
            else:
                file_args += [f"--{key}", str(value)]
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)  # a recipe key must name a flag exactly
    return parser.parse_args_into_dataclasses(args=file_args + argv, look_for_args_file=False)


def _save_config(output_dir: str, *configs) -> None:
    resolved = {}
    for cfg in configs:
        resolved.update(cfg.to_dict() if hasattr(cfg, "to_dict") else asdict(cfg))
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "run_config.yaml"), "w") as f:
        yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), f, sort_keys=True)


def setup_logging(should_log: bool) -> None:
    """Our own handler on the ``hf_mkcd`` logger, nothing on the root logger: the libraries' lines are
    printed by their own handlers, once."""
    logger.setLevel(logging.INFO if should_log else logging.WARNING)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def build_student(model_args: ModelArguments, method, teacher, data, image_size: int) -> MKCDStudentForImageClassification:
    """The student the method trains: its projector and head (or the ones asked for), built for the teacher."""
    projector = model_args.projector or method.projector
    projector = None if projector == "none" else projector
    head = model_args.head or method.head
    if teacher is None:
        if projector is not None or head != "student":
            raise ValueError(f"a student trained without a teacher has no projector and its own head; got projector="
                             f"{projector!r}, head={head!r}")
        return MKCDStudentForImageClassification(MKCDStudentConfig(
            backbone=model_args.model_name_or_path, id2label=data.id2label, num_channels=data.channels,
            image_size=image_size, image_mean=list(data.mean), image_std=list(data.std),
        ))
    kwargs = model_args.projector_kwargs()
    if kwargs and projector is None:
        raise ValueError(f"projector options {sorted(kwargs)} were given, but method {method.name!r} trains a student "
                         "without a projector (see --projector)")
    return MKCDStudentForImageClassification.from_teacher(
        teacher, model_args.model_name_or_path, projector=projector, head=head,
        projector_kwargs=kwargs if projector else None, id2label=data.id2label,
        image_size=image_size, image_mean=data.mean, image_std=data.std,
        teacher_name=model_args.teacher_model_name_or_path,
    )


def build(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments):
    """Teacher, data, student and trainer, validated against each other: ``(trainer, data)``."""
    method = get_distiller_class(training_args.method)
    teacher = None
    if method.needs_teacher:
        if model_args.teacher_model_name_or_path is None:
            raise ValueError(f"method {training_args.method!r} needs --teacher_model_name_or_path")
        teacher = load_teacher(model_args.teacher_model_name_or_path, checkpoint=model_args.teacher_checkpoint)
        cfg = getattr(teacher, "pretrained_cfg", None) or {}
        image_size = data_args.image_size or cfg.get("input_size", (3, 32, 32))[-1]
        data = prepare_datasets(data_args, first_conv_in_channels(teacher), image_size, cfg.get("mean"), cfg.get("std"),
                                views=method.views)
        check_num_classes(**{f"teacher {model_args.teacher_model_name_or_path!r}": teacher_linear_head(teacher).out_features,
                             f"dataset {data_args.dataset_name!r}": len(data.id2label)})
    else:
        check_timm_name(model_args.model_name_or_path)  # unknown names: close matches, before any loading
        input_size = get_pretrained_cfg_value(model_args.model_name_or_path, "input_size") or (3, 224, 224)
        image_size = data_args.image_size or input_size[-1]
        data = prepare_datasets(data_args, None, image_size, views=method.views)  # channels: the images' own
    student = build_student(model_args, method, teacher, data, image_size)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, train_dataset=data.train,
        eval_dataset=data.eval, processing_class=student.image_processor(),
    )
    return trainer, data


def run(model_args: ModelArguments, data_args: DataArguments, training_args: DistillationTrainingArguments) -> dict:
    setup_logging(training_args.should_log)
    set_seed(training_args.seed)
    trainer, data = build(model_args, data_args, training_args)
    if training_args.should_save:  # only the main process writes
        _save_config(training_args.output_dir, model_args, data_args, training_args)
    results = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint is None and os.path.isdir(training_args.output_dir):
            checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint is not None:
                logger.info(f"resuming from {checkpoint} (pass a fresh --output_dir to start over)")
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        if trainer.teacher is None and training_args.should_save:  # a plain classifier: also in timm's Hub layout
            trainer.student.export_timm(os.path.join(training_args.output_dir, TIMM_EXPORT_DIR))
        metrics = {**train_result.metrics, "train_samples": len(data.train)}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    metrics = {**trainer.evaluate(), "eval_samples": len(data.eval)}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    results.update(metrics)
    if data.test is not None:  # reported only: nothing above read it
        metrics = {**trainer.evaluate(data.test, metric_key_prefix="test"), "test_samples": len(data.test)}
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        results.update(metrics)
    return results
