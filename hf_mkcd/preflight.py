"""The teacher, checked for meaning before the first training step.

Counts and shapes can agree while a teacher is useless to its student: its classes in another order than the
dataset's, images at another resolution, normalisation or channel count than it was trained on. Such a run
trains without a word against a teacher at chance. So before training:

* the class names are compared (:func:`align_teacher_labels`): the same names in another order reorder the
  rows of the teacher's classifier to the dataset's order (said, and recorded); other names are refused;
* the teacher classifies a few hundred held-out images through exactly the preprocessing its inputs get in
  training (:func:`check_teacher`); far below what it should score (no better than guessing, or under half of
  its recorded accuracy) stops the run, naming each cause that can be checked: input size, normalisation,
  channels, class names. ``--skip_teacher_check`` is there for those who know better.

The measured figure goes into the run plan, ``distillation_info.json`` and the model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .models.helpers import first_conv_in_channels, match_channels, teacher_linear_head

logger = logging.getLogger("hf_mkcd")
CHECK_SAMPLES = 512  # held-out images the teacher classifies: enough to tell 10% from 20% at 3 standard deviations


class TeacherCheckError(ValueError):
    """The teacher does not mean what the dataset means (or scores far below what it should on it)."""


@dataclass
class TeacherCheck:
    """What the pre-flight measured: recorded in ``distillation_info.json`` and the model card."""

    top1: float
    samples: int
    num_classes: int
    chance: float
    floor: float  # below this the teacher is no better than guessing
    recorded_top1: Optional[float] = None  # the teacher's own figure, where it was trained by hf_mkcd
    labels_reordered: Optional[List[int]] = None  # dataset class i <- teacher output labels_reordered[i]
    findings: List[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        recorded = f", its recorded top-1 {self.recorded_top1:.1%}" if self.recorded_top1 is not None else ""
        return (
            f"teacher check: top-1 {self.top1:.1%} on {self.samples} held-out images through the training "
            f"preprocessing (chance {self.chance:.1%}{recorded})"
        )


def teacher_label_names(teacher: nn.Module) -> Optional[List[str]]:
    """The teacher's class names in output order, where its files record them (timm's ``label_names``, a
    transformers ``id2label``); None when they are unknown or only placeholders (``LABEL_0``...)."""
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    names = cfg.get("label_names")
    if not names:
        id2label = getattr(getattr(teacher, "config", None), "id2label", None) or {}
        names = [id2label[i] for i in sorted(id2label, key=int)] if id2label else None
    if not names or all(str(n) == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return [str(n) for n in names]


def align_teacher_labels(teacher: nn.Module, id2label: Dict[int, str]) -> Optional[List[int]]:
    """Make the teacher's outputs follow the dataset's class order.

    The same class names in another order: the rows of the teacher's classifier are reordered (so its logits, and
    a head reused by the student, mean the dataset's classes), and the order applied is returned. Other names
    raise :class:`TeacherCheckError`. Unknown names (nothing recorded): None, nothing changed.
    """
    names = teacher_label_names(teacher)
    data_names = [str(id2label[i]) for i in range(len(id2label))]
    if names is None or names == data_names:
        return None
    names = _as_descriptions(names, data_names)
    if names == data_names:
        return None
    if Counter(names) != Counter(data_names):
        only_teacher = sorted(set(names) - set(data_names))
        only_data = sorted(set(data_names) - set(names))
        raise TeacherCheckError(
            f"the teacher's classes are not the dataset's: {len(names)} teacher classes, {len(data_names)} in the "
            f"dataset; only the teacher has {_few(only_teacher)}, only the dataset has {_few(only_data)}. Distil on "
            "data labelled with the teacher's classes (its config's id2label / label_names), or pass "
            "--skip_teacher_check if the names differ in spelling only and their order is the same."
        )
    positions: Dict[str, List[int]] = {}
    for i, n in enumerate(names):  # a name may repeat (ImageNet has two "crane"s): occurrences pair up in order
        positions.setdefault(n, []).append(i)
    order = [positions[n].pop(0) for n in data_names]
    head = teacher_linear_head(teacher)
    with torch.no_grad():
        head.weight.copy_(head.weight[order].clone())
        if head.bias is not None:
            head.bias.copy_(head.bias[order].clone())
    if isinstance(getattr(teacher, "pretrained_cfg", None), dict):
        teacher.pretrained_cfg = {**teacher.pretrained_cfg, "label_names": data_names}
    config = getattr(teacher, "config", None)
    if config is not None and getattr(config, "id2label", None):
        config.id2label = dict(enumerate(data_names))
        config.label2id = {n: i for i, n in enumerate(data_names)}
    moved = sum(i != j for i, j in enumerate(order))
    logger.warning(
        f"the teacher names the dataset's {len(order)} classes in another order ({moved} at another position): its "
        "classifier rows were reordered to the dataset's order, so its outputs (and a head the student reuses) "
        "mean the dataset's classes"
    )
    return order


def _as_descriptions(names: List[str], data_names: List[str]) -> List[str]:
    """ImageNet teachers may name classes by WordNet id (n01440764) where the dataset says "tench, Tinca tinca":
    the same classes, translated with timm's ImageNet tables."""
    import re

    synset = re.compile(r"n\d{8}")
    if not all(synset.fullmatch(n) for n in names) or any(synset.fullmatch(n) for n in data_names):
        return names
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    known = set(info.label_names())
    return [info.label_name_to_description(n) if n in known else n for n in names]


def recorded_top1(teacher_path: Optional[str]) -> Optional[float]:
    """The top-1 a teacher trained by hf_mkcd recorded on its own evaluation set (``all_results.json``)."""
    path = os.path.join(teacher_path, "all_results.json") if teacher_path and os.path.isdir(teacher_path) else None
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        value = json.load(f).get("eval_top1")
    return float(value) if value is not None else None


@torch.no_grad()
def measure_top1(teacher: nn.Module, dataset, samples: int = CHECK_SAMPLES, batch_size: int = 128) -> tuple:
    """(top-1, images) of the teacher on the first ``samples`` images of ``dataset`` (a held-out split, already
    transformed as the teacher's training inputs are), in eval mode."""
    device = next(teacher.parameters()).device
    in_chans = first_conv_in_channels(teacher)
    n = min(samples, len(dataset))
    correct = 0
    was_training = teacher.training
    teacher.eval()
    try:
        for start in range(0, n, batch_size):
            rows = dataset[start : min(n, start + batch_size)]
            pixels = torch.stack(list(rows["pixel_values"])).to(device)
            labels = torch.as_tensor(rows["labels"], device=device)
            logits = _logits(teacher(match_channels(pixels, in_chans)))
            correct += int((logits.argmax(-1) == labels).sum())
    finally:
        teacher.train(was_training)
    return correct / max(n, 1), n


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def possible_causes(teacher: nn.Module, data, image_size: int, label_names_known: bool) -> List[str]:
    """What can make a good teacher score badly on these inputs, as far as the files say."""
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    causes = []
    trained = cfg.get("input_size")
    if trained and int(trained[-1]) != int(image_size):
        causes.append(
            f"input size: images are fed at {image_size}x{image_size}, the teacher's config says it was trained at "
            f"{trained[-1]}x{trained[-2]} (--image_size {trained[-1]})"
        )
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean and std and (_differs(mean, data.mean) or _differs(std, data.std)):
        causes.append(
            f"normalisation: images are normalised with mean {_fmt(data.mean)} / std {_fmt(data.std)}, the teacher's "
            f"config has {_fmt(mean)} / {_fmt(std)} (drop --image_mean/--image_std to use the teacher's)"
        )
    teacher_chans = first_conv_in_channels(teacher, data.channels)
    if teacher_chans != data.source_channels:
        causes.append(
            f"channels: the images have {data.source_channels} channel(s), converted for the teacher's "
            f"{teacher_chans}-channel input: was it trained on images like these?"
        )
    if not label_names_known:
        causes.append(
            "class order: the teacher records no class names, so the order of its outputs could not be compared "
            "with the dataset's label ids (a teacher trained with another label order scores near 0%)"
        )
    return causes


def check_teacher(
    teacher: nn.Module,
    data,
    image_size: int,
    teacher_path: Optional[str] = None,
    samples: int = CHECK_SAMPLES,
) -> TeacherCheck:
    """Align the teacher's class order with the dataset's, then measure it on held-out images; raise
    :class:`TeacherCheckError` when it scores far below what it should, naming the causes found."""
    label_names_known = teacher_label_names(teacher) is not None
    order = align_teacher_labels(teacher, data.id2label)
    top1, n = measure_top1(teacher, data.eval, samples)
    k = len(data.id2label)
    chance = 1.0 / k
    floor = chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1))
    check = TeacherCheck(
        top1=top1,
        samples=n,
        num_classes=k,
        chance=chance,
        floor=min(floor, 1.0),
        recorded_top1=recorded_top1(teacher_path),
        labels_reordered=order,
        findings=possible_causes(teacher, data, image_size, label_names_known),
    )
    low = top1 < check.floor
    below_record = check.recorded_top1 is not None and top1 < 0.5 * check.recorded_top1
    if low or below_record:
        why = "no better than guessing" if low else f"under half of its recorded {check.recorded_top1:.1%}"
        causes = "".join(f"\n  - {c}" for c in check.findings) or (
            "\n  - none that hf_mkcd can check (input size, normalisation, channels and class names agree): check "
            "the teacher's weights and the dataset's labels"
        )
        raise TeacherCheckError(
            f"{check.summary()}: {why}, so a student would learn from noise. Possible causes:{causes}\n"
            "Fix the cause, or pass --skip_teacher_check to train anyway."
        )
    return check


def _differs(a: Sequence[float], b: Sequence[float], tol: float = 1e-3) -> bool:
    a, b = list(a), list(b)
    if len(a) != len(b):  # one per channel on each side: compare what a channel conversion would use
        a, b = [sum(a) / len(a)], [sum(b) / len(b)]
    return any(abs(x - y) > tol for x, y in zip(a, b))


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _few(names: List[str], k: int = 5) -> str:
    return (", ".join(repr(n) for n in names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")) or "none"
