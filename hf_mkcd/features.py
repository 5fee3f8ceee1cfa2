"""What a distiller reads from the models, computed in one pass and only when asked for.

Keys: ``features`` (the map the classifier pools), ``stages`` (``forward_intermediates``: stem + stage
maps), ``preact_stages`` (the same maps before their last ReLU: CIFAR zoo only), ``pooled`` (the
global-pooled feature), ``logits``, and for the student ``projected`` (its projector's output).
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
import torch.nn as nn

from .models.modeling_mkcd_student import MKCDStudentForImageClassification, match_channels

STAGE_KEYS = {"stages", "preact_stages"}
DATA_KEYS = {"index", "strong"}  # read from the batch, not computed by a model


def backbone_outputs(backbone: nn.Module, x: torch.Tensor, needs: Iterable[str], who: str = "model") -> Dict[str, object]:
    needs = set(needs)
    out: Dict[str, object] = {}
    if needs & STAGE_KEYS:
        name = getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__)
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


def student_outputs(student: MKCDStudentForImageClassification, x: torch.Tensor, needs: Iterable[str]) -> Dict[str, object]:
    needs = (set(needs) - DATA_KEYS) | {"logits"}
    out = backbone_outputs(student.backbone, match_channels(x, student.config.num_channels), needs, "student")
    projected = None
    if student.projector is not None and ("projected" in needs or student.classifier is not None):
        projected = out["projected"] = student.projector(out["features"])
    out["logits"] = student.logits_from(out["features"], projected)
    if "pooled" in needs:
        out["pooled"] = student.backbone.forward_head(out["features"], pre_logits=True)
    return out


def teacher_outputs(teacher: nn.Module, x: torch.Tensor, needs: Iterable[str]) -> Dict[str, object]:
    needs = set(needs) - DATA_KEYS
    out = backbone_outputs(teacher, x, needs, "teacher")
    if "logits" in needs:
        out["logits"] = teacher.forward_head(out["features"])
    if "pooled" in needs:
        out["pooled"] = teacher.forward_head(out["features"], pre_logits=True)
    return out
