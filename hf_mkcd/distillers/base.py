"""The distiller interface and its registry.

A distiller is an ``nn.Module`` that turns student and teacher outputs into *named, weighted* loss
terms (``{"loss_ce": ..., "loss_kd": ...}``; the total is their sum). Everything a method reads is
declared on its class, and the trainer and the data pipeline serve it generically:

* ``student_needs`` / ``teacher_needs``: model outputs (``logits``, ``pooled``, ``features`` = the
  pre-pool map, ``projected`` = the student's projector output, ``stages`` / ``preact_stages`` =
  stem + stage maps, post- or pre-activation). Only these are computed.
* ``batch_needs``: extra batch keys handed to :meth:`Distiller.forward` in ``batch`` besides
  ``labels`` (e.g. ``index``, the sample's position in the training set, for CRD's memory bank).
* ``views``: extra augmented views of each image (e.g. ``("strong",)`` for MLKD). The data pipeline
  makes them (``hf_mkcd.data.VIEWS``); student and teacher outputs of a view arrive under its name.
* ``projector`` / ``head``: the deployable student it trains by default; ``heads`` the heads it
  accepts (``from_teacher`` builds the student, :func:`hf_mkcd.validation.check_student_fits`
  checks it).
* ``defaults``: its hyper-parameters, overridable by ``DistillationTrainingArguments``.
* ``uses_temperature`` and ``temperature_schedule``: whether it reads ``step.temperature`` and the
  schedule it gets unless the user picks one.

Trainable modules a method needs only for training live in the distiller; the trainer puts the
student and the distiller in one module, so the optimizer, DDP and checkpoints see both. A method
that needs them is built from a :class:`Pair` (the two models and the shapes probed once); a
logit-only method needs nothing to be complete.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

DISTILLERS: Dict[str, Type["Distiller"]] = {}


def register_distiller(name: str):
    def wrap(cls):
        if name in DISTILLERS:
            raise ValueError(f"distiller {name!r} is already registered by {DISTILLERS[name].__module__}")
        cls.name = name
        DISTILLERS[name] = cls
        return cls

    return wrap


def list_distillers():
    return sorted(DISTILLERS)


def hyperparameters(name: str) -> Dict[str, object]:
    """A method's hyper-parameters and their defaults, as ``--distiller_kwargs`` / the weight flags set them; a
    method that reads a temperature also lists its default schedule."""
    from .temperature import DEFAULT_TEMPERATURE

    cls = get_distiller_class(name)
    out = dict(cls.defaults)
    if cls.uses_temperature and cls.temperature_schedule == "constant":
        out["temperature"] = DEFAULT_TEMPERATURE
    elif cls.uses_temperature:
        out["temperature_schedule"] = cls.temperature_schedule
    return out


def describe_hyperparameters(name: str) -> str:
    """``"beta=8, ..."``: one line for ``--help`` and the docs."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyperparameters(name).items())


def get_distiller_class(name: str) -> Type["Distiller"]:
    if name not in DISTILLERS:
        close = difflib.get_close_matches(name, DISTILLERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Valid methods: {', '.join(list_distillers())}")
    return DISTILLERS[name]


@dataclass
class Step:
    """Where training stands when a loss is computed, counted as the reference code counts it.

    ``epoch`` is the epoch in progress, whole and 1-based (mdistiller, RepDistiller and CTKD loop
    ``for epoch in range(1, epochs + 1)``): warm-ups read ``min(epoch / 20, 1)`` and start at 0.05.
    ``progress`` is ``global_step / max_steps`` in [0, 1] (in training, a 0-dim tensor on the device: see
    ``DistillationTrainer._progress``). ``temperature`` is filled in from the
    distiller's schedule before its ``forward`` runs.
    """

    epoch: int = 1
    progress: float = 0.0
    temperature: Optional[Union[float, torch.Tensor]] = None

    @classmethod
    def from_trainer_state(cls, state) -> "Step":
        epoch = int(math.floor(float(state.epoch or 0.0))) + 1
        progress = state.global_step / state.max_steps if state.max_steps else 0.0
        return cls(epoch=epoch, progress=progress)

    @staticmethod
    def previous_epoch(state) -> Optional[int]:
        """The 1-based epoch of the step before the one about to run (None before the first step)."""
        if not state.global_step:
            return None
        return max(1, int(math.ceil(float(state.epoch or 0.0) - 1e-9)))


@dataclass
class Pair:
    """What a distiller with trainable modules is built from: the two models and the shapes of what it
    reads, probed once (:func:`hf_mkcd.features.probe_shapes`). Shapes exclude the batch dimension;
    stage lists are lists of shapes."""

    student: nn.Module
    teacher: nn.Module
    student_shapes: Dict[str, object]
    teacher_shapes: Dict[str, object]
    num_train_samples: Optional[int] = None


class Distiller(nn.Module):
    name: str = ""
    paper: str = ""  # "Authors, venue year": shown in model cards and the README
    bibtex: str = ""  # the paper's citation, in model cards
    recipe_note: str = ""  # the reference's setting in a line: the comment of the generated recipes
    recipe_settings: Dict[str, object] = {}  # recipe keys every pair sets for this method (e.g. its temperature)
    student_needs = frozenset({"logits"})
    teacher_needs = frozenset({"logits"})
    batch_needs = frozenset()
    views: Tuple[str, ...] = ()
    projector: Optional[str] = None  # projector of the deployable student (default)
    head: str = "student"  # "teacher": the student reuses the teacher's frozen classifier (default)
    heads: Tuple[str, ...] = ()  # heads the method accepts (default: only ``head``)
    uses_temperature = False
    temperature_schedule: str = "constant"  # the schedule it gets unless the user picks one
    needs_pair = False  # True: builds trainable modules or buffers from the pair's shapes
    defaults: Dict[str, float] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.needs_teacher = bool(cls.teacher_needs)
        cls.heads = cls.heads or (cls.head,)

    def __init__(self, pair: Optional[Pair] = None, temperature: Optional[nn.Module] = None, **hparams):
        super().__init__()
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(f"method {self.name!r} has no {sorted(unknown)}; its hyper-parameters are {self.defaults}")
        self.hparams = {**self.defaults, **{k: v for k, v in hparams.items() if v is not None}}
        if self.needs_pair and pair is None:
            raise ValueError(f"method {self.name!r} builds modules from the teacher/student pair: pass pair=Pair(...)")
        if self.uses_temperature and temperature is None:
            from .temperature import build_temperature

            temperature = build_temperature(self.temperature_schedule)
        # the one temperature object of the run: its state (CTKD's theta) is trained and checkpointed here
        self.temperature = temperature if self.uses_temperature else None

    def forward(
        self, student: Dict[str, object], teacher: Dict[str, object], batch: Dict[str, torch.Tensor], step: Step
    ) -> Dict[str, torch.Tensor]:
        """Named, weighted loss terms. ``batch`` holds ``labels`` and the keys of ``batch_needs``;
        ``student[view]`` / ``teacher[view]`` hold the outputs of each extra view."""
        raise NotImplementedError

    def setting_problems(self, num_classes: Optional[int], num_train_samples: Optional[int]) -> List[str]:
        """Terms of this method that degenerate in this setting (few classes, few samples), each as a sentence: the
        trainer warns with them before the first step. The default: none."""
        return []

    # -- optional stage structure (AB's initialisation stage) -----------------------------------------
    def stage(self, epoch: int) -> str:
        """Name of the training stage ``epoch`` belongs to. When it changes, the trainer clears the
        optimizer's state (momentum), as the reference code starts a fresh optimizer per stage."""
        return "main"

    def frozen_modules(self, step: Step) -> Tuple[str, ...]:
        """Modules (names in the trained ``DistillationModule``: ``student.…`` / ``distiller.…``) that this step
        leaves exactly as they are: no gradient, so no weight decay or momentum, and eval mode, so their BN
        statistics do not move."""
        return ()

    @staticmethod
    def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)
