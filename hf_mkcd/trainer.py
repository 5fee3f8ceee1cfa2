"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a frozen teacher into a student.

* The trained module is ``DistillationModule(student, distiller)``: the optimizer, DDP and every
  checkpoint see the student *and* the method's own trainable modules. The teacher is a Trainer
  attribute: on the student's device, eval mode, ``requires_grad=False``, run under ``no_grad`` and
  the accelerator's autocast, once per batch; never in the optimizer, never in a checkpoint.
* Checkpoints hold the student exactly as ``save_pretrained`` writes it (so every ``checkpoint-N`` is a
  loadable model), plus ``distiller.safetensors`` for the method's state, plus Trainer's optimizer,
  scheduler and RNG states: resuming reproduces the run.
* Losses are per-batch means and ``loss_is_scaled_for_ga = False``: Trainer divides by the
  accumulation steps, so gradient accumulation equals one large batch.
* Each loss term and the temperature are logged; a non-finite loss stops the run with the step and terms.
"""
from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from .distillers import Distiller, build_temperature_schedule, get_distiller_class, list_distillers
from .distillers.temperature import TEMPERATURE_SCHEDULES
from .evaluation import compute_metrics as default_compute_metrics
from .features import student_outputs, teacher_outputs
from .models.modeling_mkcd_student import (MKCDStudentForImageClassification, first_conv_in_channels, match_channels,
                                           teacher_linear_head)

DISTILLER_WEIGHTS_NAME = "distiller.safetensors"


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    r"""``TrainingArguments`` plus the distillation settings.

    Args:
        method (`str`): the distiller (``--method``): see ``hf_mkcd.list_distillers()``.
        temperature_schedule (`str`): how the temperature moves over training (``constant``, ``linear_rising``,
            ``linear_falling``, ``cosine_rising``, ``cosine_falling``).
        temperature (`float`): the constant temperature; temperature_min / temperature_max bound the ramps.
        ce_weight / kd_weight / feat_weight (`float`, *optional*): override the method's default loss weights.
        lr_decay_epochs (`list[int]`, *optional*): multiply the LR by ``lr_decay_rate`` after these epochs
            (the CIFAR recipe: 150 180 210); replaces ``lr_scheduler_type``.
    """

    method: str = field(default="mkcd", metadata={"help": "Distillation method: " + ", ".join(list_distillers())})
    temperature_schedule: str = field(default="constant", metadata={"help": "One of " + ", ".join(TEMPERATURE_SCHEDULES) + ", ctkd (learned, adversarial)"})
    temperature: float = field(default=4.0, metadata={"help": "Temperature of the constant schedule."})
    temperature_min: float = field(default=1.0, metadata={"help": "Lower end of a rising/falling schedule."})
    temperature_max: float = field(default=8.0, metadata={"help": "Upper end of a rising/falling schedule."})
    ce_weight: Optional[float] = field(default=None, metadata={"help": "Cross-entropy weight (method default if unset)."})
    kd_weight: Optional[float] = field(default=None, metadata={"help": "Logit-distillation weight (method default if unset)."})
    feat_weight: Optional[float] = field(default=None, metadata={"help": "Feature-loss weight (method default if unset)."})
    # typed str (a dict works from Python too): HfArgumentParser picks a Union's argparse type by position, and
    # typing caches Unions by unordered equality, so Optional[Union[dict, str]] could parse as `dict` or `str`
    distiller_kwargs: Optional[str] = field(default=None, metadata={"help": "Method hyper-parameters as JSON, e.g. '{\"beta\": 2.0}' for dkd (see each method's defaults)."})
    lr_decay_epochs: Optional[List[int]] = field(
        default_factory=lambda: [150, 180, 210],
        metadata={"help": "Multi-step LR: LR *= lr_decay_rate after each of these epochs (0 disables; also off when "
                          "another --lr_scheduler_type than linear is chosen)."})
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each multi-step LR decay."})
    # Defaults that differ from TrainingArguments: the CIFAR-100 recipe of the KD literature
    # (METHODS.md 3.1: SGD 0.9, LR 0.05, wd 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210);
    # image columns are consumed by set_transform; every student parameter is used in each step.
    learning_rate: float = field(default=0.05, metadata={"help": "Initial LR (CIFAR recipe: 0.05; 0.01 for MobileNetV2/ShuffleNet students)."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    weight_decay_all: bool = field(default=True, metadata={"help": "Decay every parameter, biases and BN included, as the CIFAR reference code does (false: transformers' rule, no decay on biases and norms)."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (TrainingArguments' names)."})
    optim_args: Optional[str] = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    num_train_epochs: float = field(default=240.0, metadata={"help": "Training epochs."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})
    do_train: bool = field(default=True, metadata={"help": "Train (--do_train false: only evaluate)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw image columns for set_transform."})
    ddp_find_unused_parameters: Optional[bool] = field(default=False, metadata={"help": "All student parameters are used."})

    def __post_init__(self):
        get_distiller_class(self.method)  # unknown method -> the valid ones are listed
        if isinstance(self.distiller_kwargs, str):
            self.distiller_kwargs = json.loads(self.distiller_kwargs)
        build_temperature_schedule(self.temperature_schedule, **self.temperature_kwargs())
        if self.lr_decay_epochs is not None:
            self.lr_decay_epochs = [int(e) for e in self.lr_decay_epochs if int(e) > 0] or None
        if self.lr_decay_epochs is not None and sorted(self.lr_decay_epochs) != list(self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be increasing, got {self.lr_decay_epochs}")
        if str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) != "linear":
            self.lr_decay_epochs = None  # an explicitly chosen scheduler wins over the multi-step default
        super().__post_init__()

    def temperature_kwargs(self) -> dict:
        return dict(temperature=self.temperature, temperature_min=self.temperature_min, temperature_max=self.temperature_max)

    def loss_weights(self) -> dict:
        """The method's hyper-parameters set here: loss-weight flags + ``distiller_kwargs``."""
        weights = {k: getattr(self, k) for k in ("ce_weight", "kd_weight", "feat_weight") if getattr(self, k) is not None}
        return {**weights, **(self.distiller_kwargs or {})}


class DistillationModule(nn.Module):
    """Student + distiller: the one module the optimizer, DDP and checkpoints see. Its forward
    computes the whole loss, so DDP's gradient hooks cover every trainable piece."""

    accepts_loss_kwargs = False
    main_input_name = "pixel_values"

    def __init__(self, student: MKCDStudentForImageClassification, distiller: nn.Module):
        super().__init__()
        self.student = student
        self.distiller = distiller
        self.config = student.config

    def forward(self, pixel_values, labels=None, teacher_outputs=None, temperature=None, progress: float = 0.0,
                epoch: float = 0.0, index=None, pixel_values_strong=None):
        distilling = teacher_outputs is not None or not self.distiller.needs_teacher
        needs = self.distiller.student_needs if (distilling and labels is not None) else {"logits"}
        student = student_outputs(self.student, pixel_values, needs)
        if labels is None:
            return {"logits": student["logits"]}
        if not distilling:  # evaluation: the student's own cross-entropy
            return {"loss": nn.functional.cross_entropy(student["logits"].float(), labels), "logits": student["logits"]}
        if "strong" in self.distiller.student_needs:
            if pixel_values_strong is None:
                raise ValueError(f"method {self.distiller.name!r} needs a strong second view: --augmentation weak_strong")
            student["logits_strong"] = student_outputs(self.student, pixel_values_strong, {"logits"})["logits"]
        if "index" in self.distiller.student_needs:
            if index is None:
                raise ValueError(f"method {self.distiller.name!r} needs each sample's dataset index: prepare the training "
                                 "set with hf_mkcd.data.prepare_datasets (it adds the index column)")
            student["index"] = index
        teacher = dict(teacher_outputs or {})
        if "features" in teacher:
            proj = self.student.projector
            teacher["features_aligned"] = proj.align_teacher(teacher["features"]) if proj is not None else teacher["features"]
        if self.distiller.temperature_module is not None:
            temperature = self.distiller.temperature_module(epoch)
        terms = self.distiller(student, teacher, labels, temperature=temperature, progress=progress, epoch=epoch)
        return {"loss": sum(terms.values()), "logits": student["logits"], "terms": terms, "temperature": temperature}


class MultiStepSchedule:
    """LR factor: linear warm-up, then ``rate ** (number of milestones passed)`` (picklable for scheduler.pt)."""

    def __init__(self, milestones: List[int], rate: float, warmup_steps: int = 0):
        self.milestones, self.rate, self.warmup_steps = list(milestones), rate, warmup_steps

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.rate ** bisect.bisect_right(self.milestones, step)


class AugmentationEpochCallback(TrainerCallback):
    """Tell a dataset transform with ``set_epoch`` which epoch starts (deterministic augmentation)."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)


class DistillationTrainer(Trainer):
    """``Trainer(model=student, teacher_model=teacher, args=DistillationTrainingArguments(...), ...)``."""

    loss_is_scaled_for_ga = False

    def __init__(self, model: MKCDStudentForImageClassification = None, teacher_model: Optional[nn.Module] = None,
                 args: Optional[DistillationTrainingArguments] = None, distiller: Optional[nn.Module] = None, **kwargs):
        if args is None:
            args = DistillationTrainingArguments(output_dir="distillation_output")
        if not isinstance(args, DistillationTrainingArguments):
            raise TypeError("args must be DistillationTrainingArguments (TrainingArguments + the distillation settings)")
        if not isinstance(model, MKCDStudentForImageClassification):
            raise TypeError("model must be an MKCDStudentForImageClassification (build it with .from_teacher(...))")
        cls = type(distiller) if distiller is not None else get_distiller_class(args.method)
        if not cls.teacher_needs:
            teacher_model = None
        elif teacher_model is None:
            raise ValueError(f"method {args.method!r} needs a teacher: pass teacher_model=")
        self._check_pair(model, teacher_model, cls, args.method)
        self._check_world_size(args)
        train_dataset = kwargs.get("train_dataset")
        distiller = distiller or cls(
            student=model, teacher=teacher_model, **args.loss_weights(),
            num_train_samples=len(train_dataset) if train_dataset is not None and hasattr(train_dataset, "__len__") else None)
        schedule = build_temperature_schedule("ctkd" if distiller.learned_temperature else args.temperature_schedule,
                                              **args.temperature_kwargs())
        if isinstance(schedule, nn.Module):
            if not distiller.uses_temperature:
                raise ValueError(f"method {args.method!r} uses no temperature: --temperature_schedule ctkd does not apply")
            distiller.temperature_module = schedule
        kwargs.setdefault("compute_metrics", default_compute_metrics)
        super().__init__(model=DistillationModule(model, distiller), args=args, **kwargs)
        self.teacher = None
        if teacher_model is not None:
            self.teacher = teacher_model.to(self.args.device).eval().requires_grad_(False)
            self._teacher_in_chans = first_conv_in_channels(self.teacher, model.config.num_channels)
        self.temperature_schedule = None if isinstance(schedule, nn.Module) else schedule
        transform = (getattr(self.train_dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if hasattr(transform, "set_epoch"):
            self.add_callback(AugmentationEpochCallback(transform))
        self._terms: Dict[str, torch.Tensor] = {}
        self._terms_count = 0
        self._last_temperature = None  # float, or a detached tensor for a learned temperature

    # -- validation before anything runs ---------------------------------------------------------
    @staticmethod
    def _check_pair(student, teacher, method_cls, method):
        cfg = student.config
        if (method_cls.projector or None) != cfg.projector or method_cls.head != cfg.head:
            raise ValueError(
                f"method {method!r} trains a student with projector={method_cls.projector!r}, head={method_cls.head!r}, but "
                f"this student has projector={cfg.projector!r}, head={cfg.head!r}. Build it with "
                f"MKCDStudentForImageClassification.from_teacher(teacher, {cfg.backbone!r}, projector={method_cls.projector!r}, "
                f"head={method_cls.head!r})."
            )
        if teacher is None:
            return
        n_teacher = teacher_linear_head(teacher).out_features
        if n_teacher != cfg.num_labels:
            raise ValueError(f"class-count mismatch: the teacher predicts {n_teacher} classes, the student {cfg.num_labels}")
        if cfg.teacher_feature_shape is not None:
            shape = list(Distiller.probe(student, teacher, set(), {"features"})[1]["features"])
            if shape != list(cfg.teacher_feature_shape):
                raise ValueError(
                    f"feature-shape mismatch: the student was built for a teacher map {cfg.teacher_feature_shape}, "
                    f"this teacher gives {shape} at {cfg.image_size}x{cfg.image_size}; rebuild the student with from_teacher"
                )

    @staticmethod
    def _check_world_size(args):
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != args.world_size:
            raise RuntimeError(
                f"launched as {launched} processes but training runs in {args.world_size}: the processes did not join one "
                "group. On a machine without GPUs pass --use_cpu (gloo); with GPUs check the accelerate config."
            )

    # -- the loss ---------------------------------------------------------------------------------
    @property
    def distiller(self):
        return self.accelerator.unwrap_model(self.model).distiller

    @property
    def student(self) -> MKCDStudentForImageClassification:
        return self.accelerator.unwrap_model(self.model).student

    def _teacher_outputs(self, pixel_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad(), self.accelerator.autocast():
            return teacher_outputs(self.teacher, match_channels(pixel_values, self._teacher_in_chans),
                                   self.distiller.teacher_needs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        training = model.training and labels is not None
        teacher_outputs = self._teacher_outputs(pixel_values) if (training and self.teacher is not None) else None
        strong = inputs.get("pixel_values_strong")
        if teacher_outputs is not None and strong is not None and "strong" in self.distiller.teacher_needs:
            teacher_outputs["logits_strong"] = self._teacher_outputs(strong)["logits"]
        progress = self.state.global_step / self.state.max_steps if self.state.max_steps else 0.0
        temperature = self.temperature_schedule(progress) \
            if (self.distiller.uses_temperature and self.temperature_schedule is not None) else None
        out = model(pixel_values=pixel_values, labels=labels, teacher_outputs=teacher_outputs,
                    temperature=temperature, progress=progress, epoch=float(self.state.epoch or 0.0),
                    index=inputs.get("index"), pixel_values_strong=strong if training else None)
        loss = out.get("loss")
        if training:
            terms = out["terms"]
            if not torch.isfinite(loss.detach()).all():
                shown = {k: float(v.detach()) for k, v in terms.items()}
                raise FloatingPointError(
                    f"non-finite loss at step {self.state.global_step} (epoch {self.state.epoch}): loss terms {shown}, "
                    f"temperature {temperature}. Lower the learning rate or the loss weights, or check the inputs."
                )
            for k, v in terms.items():
                self._terms[k] = self._terms.get(k, 0.0) + v.detach().float()
            self._terms_count += 1
            temperature = out.get("temperature", temperature)
            self._last_temperature = temperature.detach() if torch.is_tensor(temperature) else temperature
        return (loss, {"logits": out["logits"]}) if return_outputs else loss

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._terms_count:
            for k, v in sorted(self._terms.items()):
                logs[k] = round(float(self.accelerator.reduce(v / self._terms_count, reduction="mean")), 6)
            if self._last_temperature is not None:
                logs["temperature"] = round(float(self._last_temperature), 6)
            self._terms, self._terms_count = {}, 0
        super().log(logs, start_time)

    def get_decay_parameter_names(self, model: nn.Module) -> List[str]:
        if self.args.weight_decay_all:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    # -- schedule ---------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.args.lr_decay_epochs is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        steps_per_epoch = max(1, len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps)
        milestones = [e * steps_per_epoch for e in self.args.lr_decay_epochs]
        schedule = MultiStepSchedule(milestones, self.args.lr_decay_rate, self.args.get_warmup_steps(num_training_steps))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- saving and resuming ------------------------------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.student.save_pretrained(output_dir)
        distiller_state = {k: v.detach().contiguous().cpu() for k, v in self.distiller.state_dict().items()}
        if distiller_state:
            save_file(distiller_state, os.path.join(output_dir, DISTILLER_WEIGHTS_NAME), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(weights):
            raise ValueError(f"{resume_from_checkpoint!r} holds no model.safetensors: not a checkpoint of this trainer")
        self.student.load_state_dict(load_file(weights), strict=True)
        distiller_file = os.path.join(resume_from_checkpoint, DISTILLER_WEIGHTS_NAME)
        if os.path.isfile(distiller_file):
            self.distiller.load_state_dict(load_file(distiller_file), strict=True)
        elif self.distiller.state_dict():
            raise ValueError(f"{resume_from_checkpoint!r} lacks {DISTILLER_WEIGHTS_NAME}, which method {self.args.method!r} needs")

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
