"""``sp``: Tung & Mori, "Similarity-Preserving Knowledge Distillation" (ICCV 2019), as mdistiller ``SP.py``.

Batch similarity G = f f^T of the flattened last stage map, rows L2-normalised:
    L = CE + 3000 * ||G_t - G_s||_F^2 / B^2
"""

import torch
import torch.nn.functional as F

from .base import Distiller, register_distiller


def similarity(feature: torch.Tensor) -> torch.Tensor:
    f = feature.float().flatten(1)
    return F.normalize(f @ f.t())


def sp_loss(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    b = student_map.shape[0]
    return (similarity(teacher_map) - similarity(student_map)).pow(2).sum() / (b * b)


@register_distiller("sp")
class SP(Distiller):
    paper = 'Tung & Mori, ICCV 2019'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + 3000 x similarity-preserving loss (mdistiller)"
    )
    bibtex = (
        '@inproceedings{tung2019similarity,\n'
        '  title={Similarity-Preserving Knowledge Distillation},\n'
        '  author={Tung, Frederick and Mori, Greg},\n'
        '  booktitle={ICCV},\n'
        '  year={2019}\n'
        '}'
    )
    student_needs = frozenset({"logits", "stages"})
    teacher_needs = frozenset({"stages"})
    defaults = {"ce_weight": 1.0, "feat_weight": 3000.0}

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_feat": h["feat_weight"] * sp_loss(student["stages"][-1], teacher["stages"][-1]),
        }
