"""timm helpers shared by the student, the loaders and the trainer.

Shipped inside every saved student (remote code, through the student's relative import): torch and
timm only.
"""

from __future__ import annotations

import difflib

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F


def create_timm_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with a clear error for unknown names (close matches listed)."""
    check_timm_name(name)
    return timm.create_model(name, pretrained=False, **kwargs)


def check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown timm architecture {name!r}.{hint} CIFAR models are named cifar_* and are registered by "
            "`import hf_mkcd`; `timm.list_models('cifar_*')` lists them."
        )


_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


def match_channels(pixel_values: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Grayscale <-> RGB: repeat a 1-channel batch for an RGB model, take the luma of an RGB batch
    for a 1-channel model (both linear, so it commutes with a per-channel-equal normalisation)."""
    c = pixel_values.shape[1]
    if c == num_channels:
        return pixel_values
    if c == 1:
        return pixel_values.expand(-1, num_channels, -1, -1)
    if c == 3 and num_channels == 1:
        w = pixel_values.new_tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)
        return (pixel_values * w).sum(1, keepdim=True)
    raise ValueError(f"model expects {num_channels}-channel images, got {c} channels")


def fit_channels(values, num_channels: int) -> tuple:
    """Per-channel statistics for ``num_channels`` channels: as given when they match, else their mean on every
    channel (an RGB model's normalisation for grayscale images, or one value for all)."""
    values = tuple(float(v) for v in values)
    if len(values) == num_channels:
        return values
    return (sum(values) / len(values),) * num_channels


def teacher_linear_head(teacher: nn.Module) -> nn.Linear:
    """The teacher's classifier as one ``nn.Linear`` (plain, or alone in a Sequential), else raise."""
    head = teacher.get_classifier() if hasattr(teacher, "get_classifier") else None
    if isinstance(head, nn.Sequential) and len(head) == 1:
        head = head[0]
    if isinstance(head, FrozenLinear):
        return head
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"the teacher's classifier is {type(head).__name__}, not a linear layer: its head cannot be reused. "
            "Use head='student' (the student's own classifier) or a teacher whose head is global pool + linear."
        )
    return head


def first_conv_in_channels(model: nn.Module, default: int = 3) -> int:
    """Input channels of the model's first convolution: the one its pretrained cfg names, else the first
    ``Conv2d`` it holds (a cfg may name a block, or a layer the architecture calls otherwise)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    try:
        named = model.get_submodule(name) if name else None
    except AttributeError:
        named = None
    for root in (named, model):
        if root is None:
            continue
        for module in root.modules():
            if isinstance(module, nn.Conv2d):
                return module.in_channels
    return default


class FrozenLinear(nn.Module):
    """A linear layer whose weight and bias are buffers: frozen by construction, still saved and
    loaded under ``<name>.weight`` / ``<name>.bias`` like ``nn.Linear``; gradients flow *through* it."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FrozenLinear":
        frozen = cls(linear.in_features, linear.out_features)
        frozen.weight.copy_(linear.weight.detach())
        frozen.bias.copy_(linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features))
        return frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, frozen"


def check_num_classes(hint: str = "", **counts) -> None:
    """The one class-count rule: every count that is known (not None) must agree.

    ``check_num_classes(teacher=100, dataset=10)`` raises ``class-count mismatch: the teacher predicts
    100 classes, the dataset has 10``; names are used as given (``teacher 'x'`` reads well too).
    """
    known = {name: int(n) for name, n in counts.items() if n is not None}
    if len(set(known.values())) <= 1:
        return
    (first, n_first), *rest = known.items()
    parts = [f"the {first} predicts {n_first} classes"] + [f"the {name} has {n}" for name, n in rest]
    raise ValueError(
        "class-count mismatch: "
        + ", ".join(parts)
        + ". "
        + (hint or "Use a teacher trained on this dataset's label set (or the dataset it was trained on).")
    )
