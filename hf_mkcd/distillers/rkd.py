"""``rkd``: Park et al., "Relational Knowledge Distillation" (CVPR 2019), as mdistiller ``RKD.py``.

On the pooled embeddings: pairwise distances (not squared, eps 1e-12, each normalised by its mean
positive distance) and triplet angles, matched with smooth L1:
    L = CE + 25 * SmoothL1(psi_D^s, psi_D^t) + 50 * SmoothL1(psi_A^s, psi_A^t)
"""

import torch
import torch.nn.functional as F

from .base import Distiller, register_distiller


def pairwise_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    d_t = pairwise_distance(e_t.float())
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distance(e_s.float())
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def rkd_angle_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    def angles(e):
        diff = F.normalize(e.float()[None, :, :] - e.float()[:, None, :], p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    return F.smooth_l1_loss(angles(e_s), angles(e_t))


@register_distiller("rkd")
class RKD(Distiller):
    paper = 'Park et al., CVPR 2019'
    recipe_note = "CE 1 + 25 x distance + 50 x angle (mdistiller)"  # the reference setting (recipe comments)
    bibtex = (
        '@inproceedings{park2019relational,\n'
        '  title={Relational Knowledge Distillation},\n'
        '  author={Park, Wonpyo and Kim, Dongju and Lu, Yan and Cho, Minsu},\n'
        '  booktitle={CVPR},\n'
        '  year={2019}\n'
        '}'
    )
    student_needs = frozenset({"logits", "pooled"})
    teacher_needs = frozenset({"pooled"})
    defaults = {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_rkd_distance": h["distance_weight"] * rkd_distance_loss(student["pooled"], teacher["pooled"]),
            "loss_rkd_angle": h["angle_weight"] * rkd_angle_loss(student["pooled"], teacher["pooled"]),
        }
