"""``DistillationTrainer``: a ``transformers.Trainer`` that distils a frozen teacher into a student.

* The trained module is ``DistillationModule(student, distiller)``: the optimizer, DDP and every
  checkpoint see the student *and* the method's own trainable modules (its temperature included).
  The teacher is a Trainer attribute: on the student's device, eval mode, ``requires_grad=False``, run
  under ``no_grad`` and the accelerator's autocast, once per batch and view; never in the optimizer,
  never in a checkpoint.
* What a method reads is declared on its class (``hf_mkcd.distillers.base``); the trainer serves it
  generically: model outputs, extra views, batch keys, training stages, parameters a step must not
  update. A new method touches its own file only.
* Checkpoints hold the student exactly as ``save_pretrained`` writes it (so every ``checkpoint-N`` is a
  loadable model), plus ``distiller.safetensors`` for the method's state, plus Trainer's optimizer,
  scheduler and RNG states: resuming reproduces the run.
* Losses are per-batch means and ``loss_is_scaled_for_ga = False``: Trainer divides by the
  accumulation steps, so gradient accumulation equals one large batch.
* Each loss term and the temperature are logged; a non-finite loss stops the run with the step and terms.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from .distillers import (
    DEFAULT_TEMPERATURE,
    TEMPERATURE_SCHEDULES,
    Step,
    build_temperature,
    get_distiller_class,
    list_distillers,
)
from .distillers.base import describe_hyperparameters
from .distillers.temperature import _check_positive
from .evaluation import compute_metrics as default_compute_metrics
from .callbacks import (
    AugmentationEpochCallback,
    FiniteMetricsCallback,
    MultiStepSchedule,
    RunPlanCallback,
    TeacherCacheCallback,
)
from .features import probe_shapes, student_outputs
from .models.helpers import first_conv_in_channels
from .models.modeling_mkcd_student import MKCDStudentForImageClassification
from .run_dir import DISTILLER_WEIGHTS_NAME, STAGING_PREFIX, checkpoint_problem, promote_staged
from .device_data import DeviceImages
from .device_data import collate as collate_device_batches
from .teacher import DistillationTeacher, as_timm_teacher
from .teacher_cache import CACHEABLE, TeacherCache, cache_fingerprint
from .validation import check_pair

MULTISTEP_BASES = ("constant", "constant_with_warmup")  # schedulers that lr_decay_epochs decays
CIFAR_LR_DECAY_EPOCHS = (150, 180, 210)  # the CIFAR-100 recipe's LR drops (of 240 epochs)
logger = logging.getLogger("hf_mkcd")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    r"""``TrainingArguments`` plus the distillation settings; defaults are the CIFAR-100 recipe of the KD
    literature (SGD 0.9, LR 0.05, weight decay 5e-4 on every parameter, batch 64, 240 epochs, LR x0.1
    after epochs 150/180/210, no gradient clipping).

    Args:
        method (`str`): the distiller (``--method``): see ``hf_mkcd.list_distillers()``.
        temperature_schedule (`str`, *optional*): how the temperature moves over training (``constant``,
            ``linear_rising``, ``linear_falling``, ``cosine_rising``, ``cosine_falling``, ``ctkd``); unset:
            the method's own default.
        temperature (`float`): the constant temperature; temperature_min / temperature_max bound the ramps.
        ce_weight / kd_weight / feat_weight (`float`, *optional*): override the method's default loss weights.
        distiller_kwargs (`str` or `dict`, *optional*): the method's other hyper-parameters (JSON).
        lr_decay_epochs (`list[int]`, *optional*): multiply the LR by ``lr_decay_rate`` after these epochs
            (the CIFAR recipe: 150 180 210), on top of a ``constant`` scheduler; ``[]`` turns it off.
    """

    method: str = field(
        default="mkcd",
        metadata={
            "help": "Distillation method, with its hyper-parameters and defaults "
            "(set them with --ce_weight / --kd_weight / --feat_weight or "
            "--distiller_kwargs): " + "; ".join(f"{m} ({describe_hyperparameters(m)})" for m in list_distillers())
        },
    )
    temperature_schedule: Optional[str] = field(
        default=None,
        metadata={
            "help": "One of "
            + ", ".join(TEMPERATURE_SCHEDULES)
            + " (default: the method's own; constant for all but ctkd and mkcd)."
        },
    )
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"help": "Temperature of the constant schedule."})
    temperature_min: float = field(default=1.0, metadata={"help": "Lower end of a rising/falling schedule."})
    temperature_max: float = field(default=8.0, metadata={"help": "Upper end of a rising/falling schedule."})
    ce_weight: Optional[float] = field(
        default=None, metadata={"help": "Cross-entropy weight (method default if unset)."}
    )
    kd_weight: Optional[float] = field(
        default=None, metadata={"help": "Logit-distillation weight (method default if unset)."}
    )
    feat_weight: Optional[float] = field(
        default=None, metadata={"help": "Feature-loss weight (method default if unset)."}
    )
    # typed str (a dict works from Python too): HfArgumentParser picks a Union's argparse type by position, and
    # typing caches Unions by unordered equality, so Optional[Union[dict, str]] could parse as `dict` or `str`
    distiller_kwargs: Optional[str] = field(
        default=None,
        metadata={
            "help": "Method hyper-parameters as JSON, e.g. '{\"beta\": 2.0}' for dkd (see each method's defaults)."
        },
    )
    lr_decay_epochs: Optional[List[int]] = field(
        default=None,
        metadata={
            "help": "Multi-step LR: LR *= lr_decay_rate after each of these epochs, on top of the constant "
            f"scheduler (unset: {' '.join(map(str, CIFAR_LR_DECAY_EPOCHS))}, the CIFAR recipe's, with the "
            "constant schedulers, none with another --lr_scheduler_type; 0 turns it off)."
        },
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each multi-step LR decay."})
    learning_rate: float = field(
        default=0.05, metadata={"help": "Initial LR (CIFAR recipe: 0.05; 0.01 for MobileNetV2/ShuffleNet students)."}
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "transformers' LR scheduler; with 'constant' (the default) --lr_decay_epochs gives the CIFAR "
            "multi-step schedule."
        },
    )
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay."})
    weight_decay_all: bool = field(
        default=True,
        metadata={
            "help": "Decay every parameter, biases and BN included, as the CIFAR reference code does (false: "
            "transformers' rule, no decay on biases and norms)."
        },
    )
    max_grad_norm: float = field(
        default=0.0,
        metadata={
            "help": "Gradient clipping norm; 0 (the default) does not clip, as none of the reference CIFAR training "
            "loops do."
        },
    )
    optim: str = field(default="sgd", metadata={"help": "Optimizer (TrainingArguments' names)."})
    optim_args: Optional[str] = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    num_train_epochs: float = field(default=240.0, metadata={"help": "Training epochs."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept while training."})
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Keep the checkpoint-* directories once the run has finished (by default they are deleted then: "
            "the final model is saved beside them, and a finished run is never resumed)."
        },
    )
    logging_steps: float = field(
        default=0.01,
        metadata={
            "help": "Log the loss terms every N steps; below 1, a fraction of the run's steps (the default 0.01: about "
            "100 points per run whatever its length, every step on a short one)."
        },
    )
    do_train: bool = field(default=True, metadata={"help": "Train (--do_train false: only evaluate)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw image columns for set_transform."})
    ddp_find_unused_parameters: Optional[bool] = field(
        default=False, metadata={"help": "All student parameters are used."}
    )
    dataloader_pin_memory: bool = field(
        default=torch.cuda.is_available(), metadata={"help": "Pin memory (only useful with a GPU)."}
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "transformers' filter of non-finite logged losses; off: it reads the loss on the host every step, "
            "and hf_mkcd stops a run whose loss is not finite anyway."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace whatever output_dir holds (by default a rerun only resumes the same run, and refuses "
            "anything else)."
        },
    )
    allow_changes: Optional[List[str]] = field(
        default=None,
        metadata={
            "help": "With --resume_from_checkpoint: settings that may differ from the run being continued (e.g. "
            "num_train_epochs lr_decay_epochs)."
        },
    )
    channels_last: bool = field(
        default=True,
        metadata={
            "help": "Run student, teacher and inputs in channels-last memory format (measured a quarter faster on "
            "CPU for the CIFAR ResNets; the usual choice on GPUs with mixed precision)."
        },
    )
    device_data: bool = field(
        default=False,
        metadata={
            "help": "Hold the training images in device memory as one uint8 tensor and make each batch there (crop + "
            "flip as one gather, the same pixels as the DataLoader path): for CIFAR-sized data on a GPU. Off by "
            "default until measured there; refused for methods with extra views and for photos."
        },
    )
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "Directory of the teacher-output cache: the teacher runs once per (epoch, sample) and every "
            "later run on the same teacher and data pipeline reads its outputs (logits, pooled features, "
            "pre-pool maps)."
        },
    )
    teacher_cache_dtype: str = field(
        default="float16",
        metadata={
            "help": "Precision of cached pooled features and maps (logits are always float32): float16 or float32."
        },
    )

    def __post_init__(self):
        method = get_distiller_class(self.method)  # unknown method -> the valid ones are listed
        if isinstance(self.optim_args, str) and self.optim_args.lower() in ("", "none"):
            self.optim_args = None  # a recipe for another optimiser clears SGD's momentum=0.9
        elif self.optim_args == "momentum=0.9" and not str(getattr(self.optim, "value", self.optim)).startswith("sgd"):
            self.optim_args = None  # the SGD default means nothing to another optimiser (AdamW would refuse it)
        if isinstance(self.distiller_kwargs, str):
            try:
                self.distiller_kwargs = json.loads(self.distiller_kwargs)
            except json.JSONDecodeError as err:
                raise ValueError(f"--distiller_kwargs must be a JSON object, e.g. '{{\"beta\": 2.0}}': {err}") from err
        if self.distiller_kwargs is not None and not isinstance(self.distiller_kwargs, dict):
            raise ValueError(f"--distiller_kwargs must be a JSON object (a mapping), got {self.distiller_kwargs!r}")
        _check_positive(
            temperature=self.temperature, temperature_min=self.temperature_min, temperature_max=self.temperature_max
        )
        if self.temperature_schedule is not None:
            build_temperature(self.temperature_schedule, **self.temperature_kwargs())  # validates name and range
            if not method.uses_temperature:
                raise ValueError(f"method {self.method!r} uses no temperature: --temperature_schedule does not apply")
        for name in ("ce_weight", "kd_weight", "feat_weight"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}")
        scheduler = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if self.lr_decay_epochs is None:  # unset: the CIFAR recipe's drops where they apply, and no warning elsewhere
            self.lr_decay_epochs = list(CIFAR_LR_DECAY_EPOCHS) if scheduler in MULTISTEP_BASES else []
        self.lr_decay_epochs = [int(e) for e in self.lr_decay_epochs if int(e) > 0] or None
        if self.lr_decay_epochs is not None and sorted(self.lr_decay_epochs) != list(self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be increasing, got {self.lr_decay_epochs}")
        super().__post_init__()
        if self.lr_decay_epochs is not None and scheduler not in MULTISTEP_BASES:
            logger.warning(
                f"--lr_scheduler_type {scheduler} is used as it is: --lr_decay_epochs {self.lr_decay_epochs} "
                f"only decays the {' / '.join(MULTISTEP_BASES)} schedulers and is ignored"
            )
            self.lr_decay_epochs = None

    def temperature_kwargs(self) -> dict:
        return dict(
            temperature=self.temperature, temperature_min=self.temperature_min, temperature_max=self.temperature_max
        )

    def loss_weights(self) -> dict:
        """The method's hyper-parameters set here: loss-weight flags + ``distiller_kwargs``."""
        weights = {
            k: getattr(self, k) for k in ("ce_weight", "kd_weight", "feat_weight") if getattr(self, k) is not None
        }
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

    def _align(self, teacher: Dict[str, object]) -> Dict[str, object]:
        if "features" in teacher:
            proj = self.student.projector
            teacher["features_aligned"] = (
                proj.align_teacher(teacher["features"]) if proj is not None else teacher["features"]
            )
        return teacher

    def forward(
        self,
        pixel_values,
        labels=None,
        teacher_outputs=None,
        step: Optional[Step] = None,
        views: Optional[Dict[str, torch.Tensor]] = None,
        batch: Optional[Dict[str, torch.Tensor]] = None,
    ):
        if step is None or labels is None:  # inference / evaluation: the student alone
            logits = student_outputs(self.student, pixel_values, {"logits"})["logits"]
            if labels is None:
                return {"logits": logits}
            return {"loss": nn.functional.cross_entropy(logits.float(), labels), "logits": logits}
        distiller, needs = self.distiller, self.distiller.student_needs
        student = student_outputs(self.student, pixel_values, needs)
        teacher = self._align(dict(teacher_outputs or {}))
        for view in distiller.views:
            student[view] = student_outputs(self.student, views[view], needs)
            if view in teacher:
                teacher[view] = self._align(dict(teacher[view]))
        step.temperature = distiller.temperature(step) if distiller.temperature is not None else None
        terms = distiller(student, teacher, {"labels": labels, **(batch or {})}, step)
        return {
            "loss": sum(terms.values()),
            "logits": student["logits"],
            "terms": terms,
            "temperature": step.temperature,
        }


class DistillationTrainer(Trainer):
    """``Trainer(model=student, teacher_model=teacher, args=DistillationTrainingArguments(...), ...)``."""

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: MKCDStudentForImageClassification = None,
        teacher_model: Optional[nn.Module] = None,
        args: Optional[DistillationTrainingArguments] = None,
        distiller: Optional[nn.Module] = None,
        **kwargs,
    ):
        if args is None:
            args = DistillationTrainingArguments(output_dir="distillation_output")
        if not isinstance(args, DistillationTrainingArguments):
            raise TypeError(
                "args must be DistillationTrainingArguments (TrainingArguments + the distillation settings)"
            )
        if not isinstance(model, MKCDStudentForImageClassification):
            raise TypeError("model must be an MKCDStudentForImageClassification (build it with .from_teacher(...))")
        method = type(distiller) if distiller is not None else get_distiller_class(args.method)
        teacher_model = as_timm_teacher(teacher_model) if teacher_model is not None else None
        if not method.needs_teacher:
            teacher_model = None
        elif teacher_model is None:
            raise ValueError(f"method {method.name!r} needs a teacher: pass teacher_model=")
        self._check_world_size(args)
        train_dataset = kwargs.get("train_dataset")
        self._check_batches(train_dataset, method)
        pair = check_pair(
            model,
            teacher_model,
            method,
            num_train_samples=len(train_dataset) if hasattr(train_dataset, "__len__") else None,
        )
        if distiller is None:
            schedule = args.temperature_schedule or method.temperature_schedule
            temperature = build_temperature(schedule, **args.temperature_kwargs()) if method.uses_temperature else None
            distiller = method(pair=pair, temperature=temperature, **args.loss_weights())
        kwargs.setdefault("compute_metrics", default_compute_metrics)
        prepared_train = train_dataset  # the pipeline's description (the teacher cache's key) lives here
        if args.device_data and train_dataset is not None:
            kwargs["train_dataset"] = DeviceImages.from_prepared(train_dataset, args.device)
            kwargs.setdefault("data_collator", collate_device_batches)
        module = DistillationModule(model, distiller)
        if args.channels_last:
            module = module.to(memory_format=torch.channels_last)
            teacher_model = teacher_model.to(memory_format=torch.channels_last) if teacher_model is not None else None
        super().__init__(model=module, args=args, **kwargs)
        self.teacher = None
        self.teacher_check = None  # what the pre-flight measured (hf_mkcd.preflight), when it ran
        if teacher_model is not None:
            self.teacher = teacher_model.to(self.args.device).eval().requires_grad_(False)
            self._teacher_in_chans = first_conv_in_channels(self.teacher, model.config.num_channels)
        # what the teacher gives is the built distiller's to say: its options can add outputs (MKCD's mid_weight)
        self.teacher_cache = self._open_teacher_cache(pair, distiller, prepared_train)
        self.distillation_teacher = (
            DistillationTeacher(
                self.teacher,
                distiller.teacher_needs,
                distiller.views,
                self.teacher_cache,
                self.accelerator.autocast,
                model.config.num_channels,
                mirror_device=self.args.device if self.args.device.type == "cuda" else None,
            )
            if self.teacher is not None
            else None
        )
        self._terms: Dict[str, torch.Tensor] = {}
        self._terms_count = 0
        self._last_temperature = None
        self._frozen = ()
        self._finite = None  # the device-side record of the first non-finite loss (_watch_finite)
        self._device_step, self._device_step_seen = None, 0  # global_step on the device (_progress)
        self._drop_last_train = False
        n_train = len(train_dataset) if hasattr(train_dataset, "__len__") else None
        self.plan_notes: List[str] = []  # said with the run plan, at the start of training
        for problem in self.distiller.setting_problems(model.config.num_labels, n_train):
            logger.warning(f"method {method.name!r}: {problem}")
            self.plan_notes.append(problem)
        self._avoid_batch_of_one(n_train)
        self.add_callback(RunPlanCallback(method.name, self.plan_notes))
        self.add_callback(FiniteMetricsCallback())
        transform = (getattr(self.train_dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if isinstance(self.train_dataset, DeviceImages):
            transform = self.train_dataset
            self.plan_notes.append(
                f"training images held in {self.args.device} memory ({transform.nbytes / 2**20:.0f} MB), each "
                "batch cropped and flipped there (--device_data)"
            )
        if hasattr(transform, "set_epoch"):
            self.add_callback(AugmentationEpochCallback(transform))

    def _open_teacher_cache(self, pair, distiller, train_dataset):
        if not self.args.teacher_cache or self.teacher is None:
            return None
        if not TeacherCache.supports(distiller.teacher_needs):
            logger.warning(
                f"--teacher_cache: method {distiller.name!r} reads {sorted(distiller.teacher_needs)}, of which only "
                f"{', '.join(CACHEABLE)} are cached: the teacher runs every step"
            )
            return None
        precision = (
            f"{self.args.device.type}:{'bf16' if self.args.bf16 else 'fp16' if self.args.fp16 else 'fp32'}"
            f"{':channels_last' if self.args.channels_last else ''}"
        )
        shapes = pair.teacher_shapes
        if not set(distiller.teacher_needs) <= set(shapes):  # options of the built distiller added outputs (MKCD's)
            shapes = probe_shapes(pair.student, pair.teacher, (), distiller.teacher_needs)[1]
        cache = TeacherCache(
            self.args.teacher_cache,
            cache_fingerprint(self.teacher, train_dataset, precision),
            self.args.teacher_cache_dtype,
            shapes=shapes,
        )
        if self.args.should_save:
            epochs = self.args.num_train_epochs if self.args.max_steps <= 0 else 1
            cache.plan(math.ceil(epochs), shapes, distiller.teacher_needs, distiller.views)
        self.add_callback(TeacherCacheCallback(cache))
        return cache

    def _avoid_batch_of_one(self, n_train: Optional[int]) -> None:
        """A training batch of one image breaks BatchNorm in training mode (one value per channel on pooled
        features) and every term built on batch statistics (pairwise distances, correlations): where an epoch's
        last batch would hold one image, it is dropped, a different image each epoch."""
        args = self.args
        if not n_train or args.dataloader_drop_last:
            return
        per_process = math.ceil(n_train / args.world_size)  # the distributed sampler pads to equal shares
        if per_process == 1:
            raise ValueError(
                f"{n_train} training image(s) for {args.world_size} process(es): one image per process "
                "cannot train (BatchNorm needs two values per channel); use more data or fewer processes"
            )
        if per_process % args.per_device_train_batch_size == 1:
            self._drop_last_train = True
            note = (
                f"each epoch's last batch would hold 1 image ({n_train} images, batch "
                f"{args.per_device_train_batch_size}{' per process' if args.world_size > 1 else ''}), which BatchNorm "
                "in training and batch-statistic terms cannot take: it is dropped (as --dataloader_drop_last would, "
                "for training only), a different image each epoch"
            )
            logger.warning(note)
            self.plan_notes.append(note)

    def get_train_dataloader(self):
        """Trainer's, dropping the last training batch where it would hold one image (evaluation keeps every one);
        images held on the device are batched in this process (no workers, nothing to pin)."""
        changes = {}
        if self._drop_last_train and not self.args.dataloader_drop_last:
            changes["dataloader_drop_last"] = True
        if isinstance(self.train_dataset, DeviceImages):
            changes.update(dataloader_num_workers=0, dataloader_pin_memory=False, dataloader_persistent_workers=False)
        saved = {k: getattr(self.args, k) for k in changes}
        for k, v in changes.items():
            setattr(self.args, k, v)
        try:
            return super().get_train_dataloader()
        finally:
            for k, v in saved.items():
                setattr(self.args, k, v)

    @staticmethod
    def _check_batches(train_dataset, method) -> None:
        """The batch keys and views the method reads must come out of the training set: checked on sample 0."""
        wanted = set(method.batch_needs) | {f"pixel_values_{v}" for v in method.views}
        if not wanted or train_dataset is None or not hasattr(train_dataset, "__getitem__"):
            return
        missing = sorted(wanted - set(train_dataset[0]))
        if missing:
            raise ValueError(
                f"method {method.name!r} reads {missing} from each training batch, which this training set does not "
                f"give: prepare it with hf_mkcd.data.prepare_datasets(..., views={tuple(method.views)!r}) (it adds the "
                "sample index and the method's views)"
            )

    @staticmethod
    def _check_world_size(args):
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != args.world_size:
            raise RuntimeError(
                f"launched as {launched} processes but training runs in {args.world_size}: the processes did not "
                "join one "
                "group. On a machine without GPUs pass --use_cpu (gloo); with GPUs check the accelerate config."
            )

    # -- the loss ---------------------------------------------------------------------------------
    @property
    def distiller(self):
        return self.accelerator.unwrap_model(self.model).distiller

    @property
    def student(self) -> MKCDStudentForImageClassification:
        return self.accelerator.unwrap_model(self.model).student

    def _teacher_outputs(self, inputs, views: Dict[str, torch.Tensor]) -> Dict[str, object]:
        """What the method reads from the teacher for this batch (``hf_mkcd.teacher.DistillationTeacher``)."""
        return self.distillation_teacher(inputs, views)

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.args.channels_last:
            for key, value in inputs.items():
                if key.startswith("pixel_values") and torch.is_tensor(value) and value.ndim == 4:
                    inputs[key] = value.contiguous(memory_format=torch.channels_last)
        return inputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        if not (model.training and labels is not None):  # evaluation: the student's own cross-entropy
            out = model(pixel_values=pixel_values, labels=labels)
            return (out.get("loss"), {"logits": out["logits"]}) if return_outputs else out.get("loss")
        distiller = self.distiller
        step = Step.from_trainer_state(self.state)
        step.progress = self._progress(pixel_values.device)
        views = {v: inputs[f"pixel_values_{v}"] for v in distiller.views}
        teacher = self._teacher_outputs(inputs, views) if self.teacher is not None else None
        for module in self._frozen:  # after Trainer's model.train(): frozen BN layers keep their statistics
            module.eval()
        out = model(
            pixel_values=pixel_values,
            labels=labels,
            teacher_outputs=teacher,
            step=step,
            views=views,
            batch={k: inputs[k] for k in distiller.batch_needs},
        )
        loss, terms = out["loss"], out["terms"]
        self._watch_finite(loss, terms, out["temperature"])
        for k, v in terms.items():
            self._terms[k] = self._terms.get(k, 0.0) + v.detach().float()
        self._terms_count += 1
        self._last_temperature = out["temperature"]
        return (loss, {"logits": out["logits"]}) if return_outputs else loss

    def _progress(self, device) -> torch.Tensor:
        """``global_step / max_steps`` as a 0-dim tensor on ``device``, so a temperature schedule neither
        synchronises a GPU step nor hands a compiled graph a new constant each step."""
        return self._global_step_on(device) / max(self.state.max_steps, 1)

    def _global_step_on(self, device) -> torch.Tensor:
        """``global_step`` as a 0-dim float tensor on ``device``: created once, then advanced there by the steps done
        since (a Python number added on the device: no copy, no host read)."""
        counter = self._device_step
        if counter is None or counter.device != device:
            counter = self._device_step = torch.tensor(float(self.state.global_step), device=device)
            self._device_step_seen = self.state.global_step
        elif self.state.global_step != self._device_step_seen:
            counter.add_(self.state.global_step - self._device_step_seen)
            self._device_step_seen = self.state.global_step
        return counter

    def _watch_finite(self, loss, terms, temperature) -> None:
        """Remember, on the device, the first step whose loss is not finite, with its terms and temperature: no
        host synchronisation in a step (a GPU step is not stalled). :meth:`_raise_if_nonfinite` reads it at every
        log, before every checkpoint and at the end, so a diverged run still stops and saves nothing diverged."""
        step = self._global_step_on(loss.device)
        if self._finite is None or self._finite["bad_step"].device != loss.device:
            self._finite = {"bad_step": torch.full_like(step, -1.0), "terms": {}}
        f = self._finite
        first = ~torch.isfinite(loss.detach()) & (f["bad_step"] < 0)
        f["bad_step"] = torch.where(first, step, f["bad_step"])
        values = dict(terms)
        if torch.is_tensor(temperature):
            values["temperature"] = temperature
        for k, v in values.items():
            seen = f["terms"].get(k)
            v = v.detach().float().reshape(())
            f["terms"][k] = v.clone() if seen is None else torch.where(first, v, seen)
        f["python_temperature"] = None if torch.is_tensor(temperature) else temperature

    def _raise_if_nonfinite(self) -> None:
        f = self._finite
        if f is None or int(f["bad_step"]) < 0:  # the one read of the device flag: at logging cadence
            return
        terms = {k: float(v) for k, v in f["terms"].items()}
        temperature = terms.pop("temperature", f.get("python_temperature"))
        raise FloatingPointError(
            f"non-finite loss at step {int(f['bad_step'])}: loss terms {terms}, temperature {temperature}. Lower the "
            "learning rate or the loss weights, or check the inputs. Its last complete checkpoint is kept; the final "
            "model is not written."
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step plus the method's stage structure: a fresh optimizer state when the stage changes,
        no update and eval mode for the modules it freezes this step (AB's initialisation)."""
        distiller, step = self.distiller, Step.from_trainer_state(self.state)
        previous = Step.previous_epoch(self.state)
        if previous is not None and distiller.stage(previous) != distiller.stage(step.epoch):
            self.optimizer.state.clear()  # the reference code starts each stage with a new optimizer
        self._frozen = self._frozen_modules(step)
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            for module in self._frozen:
                module.train()
                for p in module.parameters():
                    p.grad = None
            self._frozen = ()
        return loss

    def _frozen_modules(self, step: Step) -> tuple:
        names = self.distiller.frozen_modules(step)
        if not names:
            return ()
        modules = dict(self.accelerator.unwrap_model(self.model).named_modules())
        unknown = sorted(set(names) - set(modules))
        if unknown:
            raise ValueError(f"method {self.args.method!r} freezes {unknown}, which the trained module does not have")
        return tuple(modules[n] for n in names)

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        self._raise_if_nonfinite()
        if "loss" in logs and self._terms_count:
            for k, v in sorted(self._terms.items()):
                logs[k] = round(float(self.accelerator.reduce(v / self._terms_count, reduction="mean")), 6)
            if self._last_temperature is not None:
                logs["temperature"] = round(_as_float(self._last_temperature), 6)
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
        schedule = MultiStepSchedule(
            milestones, self.args.lr_decay_rate, self.args.get_warmup_steps(num_training_steps)
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- saving and resuming ------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into a staging directory and renamed into place once complete: a run
        killed while saving leaves no half-written ``checkpoint-N`` behind."""
        self._raise_if_nonfinite()  # a diverged model is never checkpointed
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            final = promote_staged(staging, run_dir, name)
            best = self.state.best_model_checkpoint
            if best and best.startswith(staging):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.relpath(best, staging))
                self.state.save_to_json(os.path.join(final, "trainer_state.json"))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

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
        problem = checkpoint_problem(resume_from_checkpoint, self.args.save_only_model)
        if problem:
            raise ValueError(f"cannot resume from {resume_from_checkpoint!r}: {problem}")
        self.student.load_state_dict(load_file(os.path.join(resume_from_checkpoint, "model.safetensors")), strict=True)
        distiller_file = os.path.join(resume_from_checkpoint, DISTILLER_WEIGHTS_NAME)
        if os.path.isfile(distiller_file):
            self.distiller.load_state_dict(load_file(distiller_file), strict=True)
        elif self.distiller.state_dict():
            raise ValueError(
                f"{resume_from_checkpoint!r} lacks {DISTILLER_WEIGHTS_NAME}, which method {self.args.method!r} needs"
            )

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # -- the Hub: one push of the finished run, with hf_mkcd's card ---------------------------------------
    def init_hf_repo(self, token=None, private=None) -> None:
        """Deferred: the repository is created by the push at the end of a successful run, so training starts
        offline too, and a failed run creates nothing."""
        self.hub_model_id = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        self.push_in_progress = None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoints are not pushed: the finished run is, once."""

    def create_model_card(self, *args, **kwargs) -> None:
        """hf_mkcd's card (model_cards/student.md, filled from the run's files) instead of the stock one."""
        from .model_card import write_student_card

        if self.is_world_process_zero():
            write_student_card(self.args.output_dir, self.args.hub_model_id)

    def push_to_hub(
        self,
        commit_message: Optional[str] = None,
        blocking: bool = True,
        token=None,
        revision=None,
        private=None,
        **kwargs,
    ):
        """Push the finished run in ``output_dir`` (weights, code, processor, card, curves, recipe, results)."""
        from .hub import push_run

        if not self.is_world_process_zero():
            return None
        return push_run(
            self.args.output_dir,
            self.args.hub_model_id or self.hub_model_id,
            private=private if private is not None else self.args.hub_private_repo,
            token=token or self.args.hub_token,
        )


def _as_float(value) -> Optional[float]:
    return None if value is None else float(value.detach() if torch.is_tensor(value) else value)
