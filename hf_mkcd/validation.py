"""One place that decides whether a student, a teacher, a method and a dataset fit together.

Everything here runs before the first training step, so a mismatch costs seconds, not a run:

* :func:`check_student_fits`: the student's structure (projector, head) against what the method
  trains;
* :func:`check_pair`: class counts (teacher vs student vs dataset), the teacher map the student was
  built for, the projector's output against the teacher map it is compared with. It probes both
  models once and returns the :class:`~hf_mkcd.distillers.base.Pair` the distiller is built from.
"""

from __future__ import annotations

from typing import Optional, Type

import torch.nn as nn

from .distillers.base import Distiller, Pair
from .features import probe_shapes
from .models.helpers import check_num_classes


def check_student_fits(config, method: Type[Distiller]) -> None:
    """Refuse a student whose projector / head the method cannot train (with the call that builds one)."""
    name, projector, head = method.name, config.projector, config.head
    problem = None
    if head not in method.heads:
        problem = f"reads logits from the {' or '.join(method.heads)}'s head"
    elif "projected" in method.student_needs and projector is None:
        problem = "compares the student's projected feature map with the teacher's: it needs a projector"
    elif head == "teacher" and projector is None:
        problem = "reuses the teacher's head, which reads a projected map: it needs a projector (or 'identity')"
    elif head == "student" and projector is not None and "projected" not in method.student_needs:
        problem = "never reads a projector's output: its student has none"
    if problem:
        raise ValueError(
            f"method {name!r} {problem}; this student has projector={projector!r}, head={head!r}. Build it with "
            f"MKCDStudentForImageClassification.from_teacher(teacher, {config.backbone!r}, "
            f"projector={method.projector!r}, "
            f"head={method.head!r})."
        )


def check_pair(
    student,
    teacher: Optional[nn.Module],
    method: Type[Distiller],
    num_train_samples: Optional[int] = None,
    dataset_classes: Optional[int] = None,
) -> Optional[Pair]:
    """Check student, teacher and dataset against each other; return the probed :class:`Pair` (None without a "
    "teacher)."""
    check_student_fits(student.config, method)
    if teacher is None:
        check_num_classes(
            student=student.config.num_labels,
            dataset=dataset_classes,
            hint="Set the student's id2label from the dataset it trains on.",
        )
        return None
    s_shapes, t_shapes = probe_shapes(
        student, teacher, method.student_needs | {"logits"}, method.teacher_needs | {"logits", "features"}
    )
    check_num_classes(teacher=t_shapes["logits"][-1], student=student.config.num_labels, dataset=dataset_classes)
    cfg = student.config
    if cfg.teacher_feature_shape is not None and list(t_shapes["features"]) != list(cfg.teacher_feature_shape):
        raise ValueError(
            f"feature-shape mismatch: the student was built for a teacher map {tuple(cfg.teacher_feature_shape)}, this "
            f"teacher gives {tuple(t_shapes['features'])} at {cfg.image_size}x{cfg.image_size}; rebuild the student "
            "with MKCDStudentForImageClassification.from_teacher(teacher, ...)"
        )
    if "projected" in s_shapes and len(t_shapes["features"]) == 3:
        want = (t_shapes["features"][0], *student.projector.output_size)
        if tuple(s_shapes["projected"]) != want:
            raise ValueError(
                f"the student's projector gives {tuple(s_shapes['projected'])}, the teacher map aligned "
                f"to it is {want}: rebuild the student with from_teacher"
            )
    return Pair(
        student=student,
        teacher=teacher,
        student_shapes=s_shapes,
        teacher_shapes=t_shapes,
        num_train_samples=num_train_samples,
    )
