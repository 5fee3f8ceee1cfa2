"""``dist``: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022), as
``hunto/image_classification_sota`` ``dist_kd.py``.

Pearson correlation between the softened predictions, per sample across classes (inter-class) and
per class across the batch (intra-class):
    L = CE + 2 * (beta * tau^2 * (1 - mean_i rho(Y_s[i], Y_t[i]))
                  + gamma * tau^2 * (1 - mean_j rho(Y_s[:, j], Y_t[:, j])))
CIFAR: tau 4, beta = gamma = 1, weight 2.
"""

import torch
import torch.nn.functional as F

from .base import Distiller, register_distiller


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Pearson correlation (cosine similarity after mean-centering)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits, teacher_logits, beta: float, gamma: float, temperature) -> torch.Tensor:
    y_s = F.softmax(student_logits.float() / temperature, 1)
    y_t = F.softmax(teacher_logits.float() / temperature, 1)
    inter = temperature**2 * (1 - pearson(y_s, y_t).mean())
    intra = temperature**2 * (1 - pearson(y_s.t(), y_t.t()).mean())
    return beta * inter + gamma * intra


@register_distiller("dist")
class DIST(Distiller):
    paper = 'Huang et al., NeurIPS 2022'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + 2 x (inter + intra), tau = 4 (hunto/DIST_KD)"
    )
    recipe_settings = {"temperature": 4.0}
    bibtex = (
        '@inproceedings{huang2022knowledge,\n'
        '  title={Knowledge Distillation from A Stronger Teacher},\n'
        '  author={Huang, Tao and You, Shan and Wang, Fei and Qian, Chen and Xu, Chang},\n'
        '  booktitle={NeurIPS},\n'
        '  year={2022}\n'
        '}'
    )
    uses_temperature = True
    defaults = {"ce_weight": 1.0, "kd_weight": 2.0, "beta": 1.0, "gamma": 1.0}

    def setting_problems(self, num_classes, num_train_samples):
        if num_classes is None or num_classes > 2:
            return []
        return [
            "with 2 classes each prediction is (p, 1 - p), whose Pearson correlation with the teacher's is +-1 "
            "whatever p is: DIST's inter-class term carries no gradient, only its intra-class term trains"
        ]

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_kd": h["kd_weight"]
            * dist_loss(student["logits"], teacher["logits"], h["beta"], h["gamma"], step.temperature),
        }
