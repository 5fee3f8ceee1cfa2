"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

L = 0.1 * CE(z_s, y) + 0.9 * T^2 * KL(p_t^T || p_s^T), T = 4 (mdistiller/RepDistiller CIFAR defaults).
"""
from .base import Distiller, register_distiller
from .losses import kd_loss


@register_distiller("kd")
class KD(Distiller):
    uses_temperature = True
    defaults = {"ce_weight": 0.1, "kd_weight": 0.9}

    def forward(self, student, teacher, batch, step):
        return {
            "loss_ce": self.hparams["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_kd": self.hparams["kd_weight"] * kd_loss(student["logits"], teacher["logits"], step.temperature),
        }
