"""Loss functions as pure, typed functions (testable alone); distillers combine them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), summed over classes, mean over the batch
    (= mdistiller ``kd_loss`` and RepDistiller ``KLDivLoss(batchmean) * T^2``)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
    return kl * temperature ** 2


def feature_mse(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (SimKD's ``nn.MSELoss()``)."""
    return F.mse_loss(student_feature.float(), teacher_feature.float())
