"""``dkd``: Zhao et al., "Decoupled Knowledge Distillation" (CVPR 2022), as mdistiller ``DKD.py``.

KD split into target-class (TCKD, binary [p_gt, 1 - p_gt]) and non-target-class (NCKD, the
distribution over the other classes) terms:
    L = CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD),  both T^2-scaled, summed / B.
CIFAR defaults: alpha 1, beta 8 (per-pair beta in the recipes), T 4, warm-up 20 epochs. ``epoch`` is the
whole, 1-based epoch in progress, as mdistiller counts it: the factor is 0.05 in the first epoch.
"""

import torch
import torch.nn.functional as F

from .base import Distiller, register_distiller
from .losses import warmup_factor


def dkd_loss(student_logits, teacher_logits, labels, alpha: float, beta: float, temperature) -> torch.Tensor:
    s, t = student_logits.float(), teacher_logits.float()
    gt = F.one_hot(labels, s.shape[1]).bool()
    p_s, p_t = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1)
    tckd = (b_t * (b_t.clamp_min(1e-12).log() - b_s.clamp_min(1e-12).log())).sum(1).mean() * temperature**2
    # non-target distribution: softmax with the target logit removed (mdistiller shifts it by -1000)
    log_q_s = F.log_softmax(s / temperature - 1000.0 * gt, 1)
    log_q_t = F.log_softmax(t / temperature - 1000.0 * gt, 1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1).mean() * temperature**2
    return alpha * tckd + beta * nckd


@register_distiller("dkd")
class DKD(Distiller):
    paper = 'Zhao et al., CVPR 2022'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + warm-up 20 epochs x (TCKD 1 + NCKD beta), T = 4"
    )
    recipe_settings = {"temperature": 4.0}
    bibtex = (
        '@inproceedings{zhao2022decoupled,\n'
        '  title={Decoupled Knowledge Distillation},\n'
        '  author={Zhao, Borui and Cui, Quan and Song, Renjie and Qiu, Yiyu and Liang, Jiajun},\n'
        '  booktitle={CVPR},\n'
        '  year={2022}\n'
        '}'
    )
    uses_temperature = True
    defaults = {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 20.0}

    def setting_problems(self, num_classes, num_train_samples):
        if num_classes is None or num_classes > 2:
            return []
        return [
            f"with {num_classes} classes the non-target distribution holds one class, so DKD's NCKD term is "
            f"identically 0 and beta (= {self.hparams['beta']:g}) has no effect: only TCKD and CE train"
        ]

    def forward(self, student, teacher, batch, step):
        h, labels = self.hparams, batch["labels"]
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], labels),
            "loss_kd": warmup_factor(step.epoch, h["warmup_epochs"])
            * dkd_loss(student["logits"], teacher["logits"], labels, h["alpha"], h["beta"], step.temperature),
        }
