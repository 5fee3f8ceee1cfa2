"""Loss functions as pure, typed functions (testable alone); distillers combine them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _softened_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)) per sample, summed over classes: shape (B,)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)


def kd_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """T^2 * KL per sample (MLKD masks it per sample)."""
    return _softened_kl(student_logits, teacher_logits, temperature) * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature) -> torch.Tensor:
    """Hinton KD: T^2 * KL, summed over classes, mean over the batch (= mdistiller ``kd_loss`` and
    RepDistiller ``KLDivLoss(batchmean) * T^2``)."""
    return _softened_kl(student_logits, teacher_logits, temperature).mean() * temperature**2


def feature_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (SimKD's ``nn.MSELoss()``)."""
    return F.mse_loss(student_feature.float(), teacher_feature.float())


def relative_feature_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """The MSE over the teacher map's mean square in the batch: a relative error, the same number for a teacher
    whose features are c times larger (and a student that follows)."""
    teacher_feature = teacher_feature.float()
    return F.mse_loss(student_feature.float(), teacher_feature) / teacher_feature.pow(2).mean().clamp_min(1e-12)


def head_feature_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor, head_weight: torch.Tensor):
    """The relative error measured through a linear head ``W`` (classes x channels) at every position:
    ``mean((W (a - b))^2) / mean((W b)^2)``. Only the directions the head reads count, weighed as it weighs them
    (pooling and ``W`` commute, so this is the relative error of per-position logits)."""
    w = head_weight.float()
    diff = torch.einsum("bc...,kc->bk...", student_feature.float() - teacher_feature.float(), w)
    target = torch.einsum("bc...,kc->bk...", teacher_feature.float(), w)
    return diff.pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with the whole, 1-based epoch in progress (DKD, ReviewKD)."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0
