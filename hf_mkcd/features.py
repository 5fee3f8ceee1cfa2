"""What a distiller reads from the models, computed in one pass and only when asked for.

Keys: ``features`` (the map the classifier pools), ``stages`` (``forward_intermediates``: stem + stage
maps), ``preact_stages`` (the same maps before their last ReLU: CIFAR zoo only), ``pooled`` (the
global-pooled feature), ``logits``, and for the student ``projected`` (its projector's output).
:func:`probe_shapes` runs both models once on a dummy batch to learn every shape a check or a
method's own modules need.
"""

from __future__ import annotations

from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn

from .models.helpers import first_conv_in_channels, match_channels

MODEL_OUTPUTS = frozenset({"logits", "pooled", "features", "projected", "stages", "preact_stages"})
STAGE_KEYS = {"stages", "preact_stages"}


def backbone_outputs(
    backbone: nn.Module, x: torch.Tensor, needs: Iterable[str], who: str = "model"
) -> Dict[str, object]:
    needs = set(needs)
    out: Dict[str, object] = {}
    if needs & STAGE_KEYS:
        name = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture", type(backbone).__name__)
        if "preact_stages" in needs:
            if not hasattr(backbone, "forward_stage_maps"):
                raise ValueError(
                    f"the {who} {name} does not expose pre-activation stage maps (only the hf_mkcd CIFAR zoo does), "
                    "which this method needs; choose a method that uses post-activation maps or logits"
                )
            features, out["stages"], out["preact_stages"] = backbone.forward_stage_maps(x)
        else:
            if not hasattr(backbone, "forward_intermediates"):
                raise ValueError(f"the {who} {name} has no forward_intermediates: this method needs its stage maps")
            features, out["stages"] = backbone.forward_intermediates(x)
    else:
        features = backbone.forward_features(x)
    out["features"] = features
    return out


def student_outputs(student, x: torch.Tensor, needs: Iterable[str]) -> Dict[str, object]:
    needs = set(needs) | {"logits"}
    out = backbone_outputs(student.backbone, match_channels(x, student.config.num_channels), needs, "student")
    projected = None
    if student.projector is not None and ("projected" in needs or student.classifier is not None):
        projected = out["projected"] = student.projector(out["features"])
    out["logits"] = student.logits_from(out["features"], projected)
    if "pooled" in needs:
        out["pooled"] = student.backbone.forward_head(out["features"], pre_logits=True)
    return out


def teacher_outputs(teacher: nn.Module, x: torch.Tensor, needs: Iterable[str]) -> Dict[str, object]:
    needs = set(needs)
    out = backbone_outputs(teacher, x, needs, "teacher")
    if "logits" in needs:
        out["logits"] = teacher.forward_head(out["features"])
    if "pooled" in needs:
        out["pooled"] = teacher.forward_head(out["features"], pre_logits=True)
    return out


def _shapes(outputs: Dict[str, object]) -> Dict[str, object]:
    return {
        k: ([tuple(t.shape[1:]) for t in v] if isinstance(v, list) else tuple(v.shape[1:])) for k, v in outputs.items()
    }


@torch.no_grad()
def probe_shapes(
    student, teacher: nn.Module, student_needs: Iterable[str], teacher_needs: Iterable[str]
) -> Tuple[Dict[str, object], Dict[str, object]]:
    """Shapes of what the two models give, from one dummy batch (2 images) at the student's input size,
    both in eval mode (BN statistics untouched)."""
    cfg = student.config
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    try:
        x = torch.zeros(2, cfg.num_channels, cfg.image_size, cfg.image_size, device=next(student.parameters()).device)
        s = student_outputs(student, x, student_needs)
        t_in = torch.zeros(
            2,
            first_conv_in_channels(teacher, cfg.num_channels),
            cfg.image_size,
            cfg.image_size,
            device=next(teacher.parameters()).device,
        )
        t = teacher_outputs(teacher, t_in, teacher_needs)
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return _shapes(s), _shapes(t)


@torch.no_grad()
def probe_stage(teacher: nn.Module, student_config, index: int) -> torch.Tensor:
    """The teacher's stage map ``index`` on a seeded random batch at the student's input size, in eval mode: what a
    projector onto that map must be able to output (its sign: :func:`hf_mkcd.models.projectors.output_activation`)."""
    was_training = teacher.training
    teacher.eval()
    try:
        size = student_config.image_size
        channels = first_conv_in_channels(teacher, student_config.num_channels)
        x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
        return teacher_outputs(teacher, x.to(next(teacher.parameters()).device), {"stages"})["stages"][index].cpu()
    finally:
        teacher.train(was_training)
