"""``at``: Zagoruyko & Komodakis, "Paying More Attention to Attention" (ICLR 2017), as mdistiller ``AT.py``.

Attention map Q(F) = L2-normalise(flatten(mean_c(F^p))), p = 2, on every stage map after the stem;
the larger map is average-pooled to the smaller one's size:
    L = CE + 1000 * sum_l mean((Q(F_s^l) - Q(F_t^l))^2)
Stages are paired from the first one after the stem (mdistiller's ``zip(feats[1:], feats[1:])``).
"""

import torch
import torch.nn.functional as F

from .base import Distiller, register_distiller


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.normalize(feature.float().pow(p).mean(1).flatten(1))


def match_spatial(a: torch.Tensor, b: torch.Tensor):
    """Average-pool the larger of two maps to the smaller one's spatial size."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)


def at_loss(student_maps, teacher_maps, p: float = 2.0) -> torch.Tensor:
    total = 0.0
    for f_s, f_t in zip(student_maps, teacher_maps):
        f_s, f_t = match_spatial(f_s, f_t)
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    return total


@register_distiller("at")
class AT(Distiller):
    paper = 'Zagoruyko & Komodakis, ICLR 2017'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + 1000 x attention transfer, p = 2 (mdistiller)"
    )
    bibtex = (
        '@inproceedings{zagoruyko2017paying,\n'
        '  title={Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks '
        'via Attention Transfer},\n'
        '  author={Zagoruyko, Sergey and Komodakis, Nikos},\n'
        '  booktitle={ICLR},\n'
        '  year={2017}\n'
        '}'
    )
    student_needs = frozenset({"logits", "stages"})
    teacher_needs = frozenset({"stages"})
    defaults = {"ce_weight": 1.0, "feat_weight": 1000.0, "p": 2.0}

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_feat": h["feat_weight"] * at_loss(student["stages"][1:], teacher["stages"][1:], h["p"]),
        }
