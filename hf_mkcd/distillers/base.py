"""The distiller interface and its registry.

A distiller is an ``nn.Module`` that turns student and teacher outputs into *named, weighted* loss
terms (``{"loss_ce": ..., "loss_kd": ...}``; the total is their sum). It declares:

* ``student_needs`` / ``teacher_needs``: which outputs it reads, so the trainer computes only those
  (``logits``, ``pooled``, ``features`` = the pre-pool map, ``projected`` = the student's projector
  output, ``stages`` / ``preact_stages`` = ``forward_intermediates`` maps);
* ``projector`` / ``head``: the deployable student it trains (``from_teacher`` builds it);
* ``defaults``: its hyper-parameters (METHODS.md), overridable by ``DistillationTrainingArguments``.

Trainable modules a method needs only for training live in the distiller; the trainer puts the
student and the distiller in one module, so the optimizer, DDP and checkpoints see both.
"""
from __future__ import annotations

import difflib
from typing import Dict, Optional, Type

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


def get_distiller_class(name: str) -> Type["Distiller"]:
    if name not in DISTILLERS:
        close = difflib.get_close_matches(name, DISTILLERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Valid methods: {', '.join(list_distillers())}")
    return DISTILLERS[name]


class Distiller(nn.Module):
    name: str = ""
    student_needs = frozenset({"logits"})
    teacher_needs = frozenset({"logits"})
    projector: Optional[str] = None  # projector of the deployable student
    head: str = "student"  # "teacher": the student reuses the teacher's frozen classifier
    uses_temperature = False
    learned_temperature = False  # True: the method always trains CTKD's temperature (``ctkd``)
    defaults: Dict[str, float] = {}

    def __init__(self, student=None, teacher=None, num_train_samples: Optional[int] = None, **hparams):
        super().__init__()
        self.num_train_samples = num_train_samples
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(f"method {self.name!r} has no {sorted(unknown)}; its hyper-parameters are {self.defaults}")
        self.hparams = {**self.defaults, **{k: v for k, v in hparams.items() if v is not None}}
        self.temperature_module: Optional[nn.Module] = None  # set by the trainer for a learned temperature

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teacher_needs)

    def forward(self, student: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor], labels: torch.Tensor,
                temperature: Optional[float] = None, progress: float = 0.0, epoch: float = 0.0) -> Dict[str, torch.Tensor]:
        """Named, weighted loss terms. ``progress`` = global_step / max_steps, ``epoch`` = fractional epoch."""
        raise NotImplementedError

    @staticmethod
    @torch.no_grad()
    def probe(student, teacher, needs_student, needs_teacher):
        """Shapes of what the method reads, from one dummy batch at the student's input size: used to
        size the method's own modules (regressors, connectors) before training."""
        from ..features import student_outputs, teacher_outputs
        from ..models.modeling_mkcd_student import first_conv_in_channels

        cfg = student.config
        x = torch.zeros(2, cfg.num_channels, cfg.image_size, cfg.image_size, device=next(student.parameters()).device)
        modes = (student.training, teacher.training)
        student.eval(), teacher.eval()
        try:
            s = student_outputs(student, x, needs_student)
            t_in = torch.zeros(2, first_conv_in_channels(teacher), cfg.image_size, cfg.image_size,
                               device=next(teacher.parameters()).device)
            t = teacher_outputs(teacher, t_in, needs_teacher)
        finally:
            student.train(modes[0]), teacher.train(modes[1])

        def shapes(d):
            return {k: ([tuple(x.shape[1:]) for x in v] if isinstance(v, list) else tuple(v.shape[1:])) for k, v in d.items()}

        return shapes(s), shapes(t)

    @staticmethod
    def ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)
