"""The teacher, checked for meaning before the first training step.

Counts and shapes can agree while a teacher is useless to its student: its classes in another order than the
dataset's, images at another resolution, normalisation or channel count than it was trained on. Such a run
trains without a word against a teacher at chance. So before training:

* the class names are compared (:func:`align_teacher_labels`): the same names in another order — or spelt
  otherwise (case, spaces, ``_`` / ``-``) but pairing one to one — reorder the rows of the teacher's classifier
  to the dataset's order (said, and recorded); other names are refused, both lists shown side by side in class-id
  order, with the ``--teacher_label_map`` that pairs them explicitly (then measured like any other order);
* the teacher classifies a few hundred held-out images through exactly the preprocessing its inputs get in
  training (:func:`check_teacher`) and is judged: no better than guessing stops the run; below its recorded
  top-1 by more than 3 standard errors of this sample warns loudly, and by more than that plus
  :data:`STOP_POINTS` stops it. Each judgement names the causes that can be checked, measured where they can be:
  the teacher under its recorded normalisation and under the data's own, under the best-matching order of its
  outputs; input size and channels from its config. ``--skip_teacher_check`` is there for those who know better.

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

from .models.helpers import first_conv_in_channels, fit_channels, match_channels, teacher_linear_head

logger = logging.getLogger("hf_mkcd")
CHECK_SAMPLES = 512  # held-out images the teacher classifies: enough to tell 10% from 20% at 3 standard deviations
STOP_POINTS = 0.10  # below its recorded top-1 by 3 standard errors + this much: the run stops (less: a warning)


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
    standard_error: Optional[float] = None  # of the measured top-1, were the teacher as good as recorded
    verdict: str = "as expected"  # as expected | below its record (a warning) | stopped

    def shortfall(self) -> Optional[float]:
        """How far below its recorded top-1 the teacher measured here (points, as a fraction), or None."""
        return None if self.recorded_top1 is None else self.recorded_top1 - self.top1

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        recorded = (
            f", its recorded top-1 {self.recorded_top1:.1%} ± {self.standard_error:.1%} on a sample this size"
            if self.recorded_top1 is not None and self.standard_error is not None
            else ""
        )
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


def _normalised(name: str) -> str:
    """A class name without case, spaces, underscores, hyphens or slashes: ``Ankle boot`` == ``ankle_boot``."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def parse_label_map(label_map) -> Optional[Dict[str, object]]:
    """``--teacher_label_map``: a JSON object (inline, or the path of a file holding one) from each dataset class
    name to the teacher's class name or output index."""
    if label_map is None or isinstance(label_map, dict):
        return label_map
    text = str(label_map)
    if os.path.isfile(os.path.expanduser(text)):
        with open(os.path.expanduser(text)) as f:
            text = f.read()
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--teacher_label_map must be a JSON object {{dataset class: teacher class or index}}, inline or in a "
            f"file; could not parse {label_map!r} ({err})"
        ) from err
    if not isinstance(mapping, dict):
        raise ValueError(f"--teacher_label_map must be a JSON object, got {type(mapping).__name__}")
    return mapping


def _side_by_side(data_names: List[str], names: List[str], limit: int = 20) -> str:
    width = max(len(repr(n)) for n in data_names[:limit]) + 2
    rows = [f"    {'id':>3}  {'dataset':<{width}}teacher"]
    for i in range(min(limit, max(len(data_names), len(names)))):
        d = repr(data_names[i]) if i < len(data_names) else "-"
        t = repr(names[i]) if i < len(names) else "-"
        rows.append(f"    {i:>3}  {d:<{width}}{t}" + ("" if d == t else "   <- differs"))
    if max(len(data_names), len(names)) > limit:
        rows.append(f"    ... ({max(len(data_names), len(names)) - limit} more)")
    return "\n".join(rows)


def _order_from_map(mapping: Dict[str, object], names: Optional[List[str]], data_names: List[str], n_out: int):
    order = []
    for d in data_names:
        if d not in mapping:
            raise ValueError(f"--teacher_label_map has no entry for the dataset class {d!r} (it needs one per class)")
        target = mapping[d]
        if isinstance(target, int) or (
            isinstance(target, str) and target.isdigit() and (names is None or target not in names)
        ):
            index = int(target)
        elif names is not None and target in names:
            index = names.index(target)
        else:
            raise ValueError(
                f"--teacher_label_map maps {d!r} to {target!r}, which is neither one of the teacher's classes "
                f"({_few(names or [])}) nor an output index"
            )
        if not 0 <= index < n_out:
            raise ValueError(f"--teacher_label_map maps {d!r} to output {index}; the teacher has {n_out} outputs")
        order.append(index)
    if len(set(order)) != len(order):
        twice = sorted({i for i in order if order.count(i) > 1})
        raise ValueError(f"--teacher_label_map maps two dataset classes to the same teacher output(s) {twice}")
    return order


def align_teacher_labels(
    teacher: nn.Module, id2label: Dict[int, str], label_map: Optional[Dict[str, object]] = None
) -> Optional[List[int]]:
    """Make the teacher's outputs follow the dataset's class order.

    ``label_map`` (``--teacher_label_map``) pairs them explicitly. Otherwise the same class names in another order,
    or names that pair one to one once case, spaces and punctuation are ignored: the rows of the teacher's classifier
    are reordered (so its logits, and a head reused by the student, mean the dataset's classes), and the order applied
    is returned. Other names raise :class:`TeacherCheckError`, both lists side by side. Unknown names: None.
    """
    names = teacher_label_names(teacher)
    data_names = [str(id2label[i]) for i in range(len(id2label))]
    head = teacher_linear_head(teacher)
    if label_map is not None:
        order = _order_from_map(label_map, names, data_names, head.out_features)
        how = "--teacher_label_map"
    else:
        if names is None or names == data_names:
            return None
        names = _as_descriptions(names, data_names)
        if names == data_names:
            return None
        how = "the same names"
        if Counter(names) != Counter(data_names):
            plain = [_normalised(n) for n in names]
            if sorted(plain) != sorted(_normalised(n) for n in data_names) or len(set(plain)) != len(plain):
                only_teacher = sorted(set(names) - set(data_names))
                only_data = sorted(set(data_names) - set(names))
                skeleton = json.dumps({d: (names[i] if i < len(names) else "?") for i, d in enumerate(data_names[:3])})
                raise TeacherCheckError(
                    f"the teacher's classes are not the dataset's: {len(names)} teacher classes, {len(data_names)} "
                    f"in the dataset; only the teacher has {_few(only_teacher)}, only the dataset has "
                    f"{_few(only_data)}. In class-id order:\n{_side_by_side(data_names, names)}\n"
                    "Distil on data labelled with the teacher's classes, or pair them with --teacher_label_map "
                    f"(a JSON object or file, dataset class -> teacher class, e.g. '{skeleton[:-1]}, ...}}'): the "
                    "pairing is then measured before training, as any order is."
                )
            names, how = plain, "the same names spelt otherwise"
            data_names_key = [_normalised(n) for n in data_names]
        else:
            data_names_key = data_names
        positions: Dict[str, List[int]] = {}
        for i, n in enumerate(names):  # a name may repeat (ImageNet has two "crane"s): occurrences pair up in order
            positions.setdefault(n, []).append(i)
        order = [positions[n].pop(0) for n in data_names_key]
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
    if order == list(range(len(order))) and how != "--teacher_label_map":
        logger.warning(f"the teacher names the dataset's classes in the same order, spelt otherwise ({how})")
        return None
    moved = sum(i != j for i, j in enumerate(order))
    logger.warning(
        f"the teacher names the dataset's {len(order)} classes in another order ({moved} at another position), paired "
        f"by {how}: its classifier rows were reordered to the dataset's order, so its outputs (and a head the student "
        "reuses) mean the dataset's classes; the measurement below checks the pairing"
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
def predictions(teacher: nn.Module, dataset, samples: int = CHECK_SAMPLES, batch_size: int = 128, pixels_fn=None):
    """(predicted, true) labels of the teacher on the first ``samples`` images of ``dataset`` (a held-out split,
    already transformed as the teacher's training inputs are), in eval mode; ``pixels_fn`` re-maps each batch first
    (another normalisation, for a diagnosis)."""
    device = next(teacher.parameters()).device
    in_chans = first_conv_in_channels(teacher)
    n = min(samples, len(dataset))
    predicted, true = [], []
    was_training = teacher.training
    teacher.eval()
    try:
        for start in range(0, n, batch_size):
            rows = dataset[start : min(n, start + batch_size)]
            pixels = torch.stack(list(rows["pixel_values"])).to(device)
            if pixels_fn is not None:
                pixels = pixels_fn(pixels)
            predicted.append(_logits(teacher(match_channels(pixels, in_chans))).argmax(-1).cpu())
            true.append(torch.as_tensor(rows["labels"]))
    finally:
        teacher.train(was_training)
    return (torch.cat(predicted), torch.cat(true)) if predicted else (torch.zeros(0), torch.zeros(0))


def measure_top1(teacher: nn.Module, dataset, samples: int = CHECK_SAMPLES, batch_size: int = 128, pixels_fn=None):
    """(top-1, images) of the teacher on the first ``samples`` images of ``dataset``."""
    predicted, true = predictions(teacher, dataset, samples, batch_size, pixels_fn)
    return float((predicted == true).float().mean()) if len(true) else 0.0, len(true)


def renormalised(from_mean, from_std, to_mean, to_std):
    """A batch normalised with (from_mean, from_std), as (to_mean, to_std) would have normalised it."""

    def fn(x):
        c = x.shape[1]
        a = torch.tensor(fit_channels(from_std, c), device=x.device).view(1, c, 1, 1)
        b = torch.tensor(fit_channels(from_mean, c), device=x.device).view(1, c, 1, 1)
        m = torch.tensor(fit_channels(to_mean, c), device=x.device).view(1, c, 1, 1)
        s = torch.tensor(fit_channels(to_std, c), device=x.device).view(1, c, 1, 1)
        return (x * a + b - m) / s

    return fn


def best_order_top1(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Top-1 under the pairing of teacher outputs with dataset classes that fits this sample best (a linear
    assignment on the confusion matrix): far above the top-1 as is, the classes are in another order."""
    from scipy.optimize import linear_sum_assignment

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    keep = (predicted < num_classes) & (true < num_classes)
    confusion.index_put_((true[keep], predicted[keep]), torch.ones_like(true[keep]), accumulate=True)
    rows, cols = linear_sum_assignment(-confusion.numpy())
    return float(confusion[rows, cols].sum()) / max(len(true), 1)


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
        modes = getattr(data, "modes", None) or {}
        total = sum(modes.values()) or 1
        shares = ", ".join(f"{100 * n / total:.1f} % {m}" for m, n in sorted(modes.items(), key=lambda kv: -kv[1]))
        causes.append(
            f"channels: the training images are {shares or f'{data.source_channels}-channel'}, converted for the "
            f"teacher's {teacher_chans}-channel input: was it trained on images like these?"
        )
    if not label_names_known:
        causes.append(
            "class order: the teacher records no class names, so the order of its outputs could not be compared "
            "with the dataset's label ids (a teacher trained with another label order scores near 0%)"
        )
    return causes


def measured_causes(teacher: nn.Module, data, top1: float, predicted, true) -> List[str]:
    """Causes measured, not only read from a config: the teacher under its recorded normalisation and under the
    data's own statistics (a linear re-mapping of the same batches), and under the best-matching order of its
    outputs. Only what would change the verdict is said."""
    from .data import measure_stats

    found = []
    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    candidates = []
    if cfg.get("mean") and cfg.get("std") and (_differs(cfg["mean"], data.mean) or _differs(cfg["std"], data.std)):
        candidates.append(("its recorded statistics", cfg["mean"], cfg["std"]))
    try:
        raw = data.train.with_format(None)
        own = measure_stats(raw, data.image_column, data.channels, n=500)
        if _differs(own[0], data.mean, 0.02) or _differs(own[1], data.std, 0.02):
            candidates.append(("this data's own statistics", own[0], own[1]))
    except Exception:  # a dataset that cannot be read raw here: the other causes still stand
        pass
    for what, mean, std in candidates:
        alt, _ = measure_top1(teacher, data.eval, len(true), pixels_fn=renormalised(data.mean, data.std, mean, std))
        if alt > top1 + max(0.01, 3 * math.sqrt(max(top1 * (1 - top1), 1e-4) / max(len(true), 1))):
            found.append(
                f"normalisation (measured): {alt:.1%} under {what} (mean {_fmt(mean)}, std {_fmt(std)}) against "
                f"{top1:.1%} under this run's (mean {_fmt(data.mean)}, std {_fmt(data.std)}): pass "
                f"--image_mean {' '.join(f'{v:.4g}' for v in mean)} --image_std {' '.join(f'{v:.4g}' for v in std)}"
            )
    k = len(data.id2label)
    if len(true) >= 5 * k:  # enough images per class for the best pairing not to be fitted noise
        best = best_order_top1(predicted, true, k)
        if best > max(2 * top1, top1 + 0.2):
            found.append(
                f"class order (measured): {best:.1%} under the pairing of its outputs with the dataset's classes that "
                f"fits best, against {top1:.1%} as they are: its classes are probably in another order (pair them "
                "with --teacher_label_map)"
            )
    return found


def check_teacher(
    teacher: nn.Module,
    data,
    image_size: int,
    teacher_path: Optional[str] = None,
    samples: int = CHECK_SAMPLES,
    label_map: Optional[Dict[str, object]] = None,
) -> TeacherCheck:
    """Align the teacher's class order with the dataset's, measure it on held-out images and judge it: raise
    :class:`TeacherCheckError` when it scores no better than guessing, or below its recorded top-1 by more than 3
    standard errors + :data:`STOP_POINTS`; warn (in the returned ``verdict`` and the log) when only by more than 3
    standard errors. Each names the causes found, measured where they can be."""
    label_names_known = teacher_label_names(teacher) is not None or label_map is not None
    order = align_teacher_labels(teacher, data.id2label, label_map)
    predicted, true = predictions(teacher, data.eval, samples)
    n = len(true)
    top1 = float((predicted == true).float().mean()) if n else 0.0
    k = len(data.id2label)
    chance = 1.0 / k
    floor = chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1))
    recorded = recorded_top1(teacher_path)
    se = math.sqrt(recorded * (1 - recorded) / max(n, 1)) if recorded is not None else None
    check = TeacherCheck(
        top1=top1,
        samples=n,
        num_classes=k,
        chance=chance,
        floor=min(floor, 1.0),
        recorded_top1=recorded,
        labels_reordered=order,
        findings=possible_causes(teacher, data, image_size, label_names_known),
        standard_error=se,
    )
    low = top1 < check.floor
    short = check.shortfall()
    stop = low or (short is not None and short > 3 * se + STOP_POINTS)
    warn = short is not None and short > 3 * se
    if stop or warn:
        check.findings = measured_causes(teacher, data, top1, predicted, true) + check.findings
    causes = "".join(f"\n  - {c}" for c in check.findings) or (
        "\n  - none that hf_mkcd can check (input size, normalisation, channels and class names agree): check "
        "the teacher's weights and the dataset's labels"
    )
    if stop:
        check.verdict = "stopped"
        why = (
            "no better than guessing"
            if low
            else f"{100 * short:.1f} points below its recorded {recorded:.1%}, more than 3 standard errors "
            f"({300 * se:.1f} points) + {100 * STOP_POINTS:.0f}"
        )
        raise TeacherCheckError(
            f"{check.summary()}: {why}, so a student would learn from a degraded teacher. Possible causes:{causes}\n"
            "Fix the cause, or pass --skip_teacher_check to train anyway."
        )
    if warn:
        check.verdict = "below its record"
        logger.warning(
            f"TEACHER BELOW ITS RECORD: {check.summary()}: {100 * short:.1f} points below, more than 3 standard "
            f"errors ({300 * se:.1f} points) of a sample this size; training goes on (past "
            f"{100 * STOP_POINTS:.0f} more points it stops). Possible causes:{causes}"
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
