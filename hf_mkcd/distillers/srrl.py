"""``srrl``: Yang et al., "Knowledge Distillation via Softmax Regression Representation Learning"
(ICLR 2021), in the setting of ``DefangChen/SimKD`` (``-c 1 -d 1 -b 1``).

A connector maps the student's pooled feature to the teacher's (1x1 conv + BN + ReLU); the teacher's
frozen classifier reads it:
    L = CE(z_s, y) + KL_T(z_t || z_s) + MSE(t', f_t^pooled) + MSE(W_t t' + b_t, z_t),   z_s = W_t t' + b_t
As in the SRRL paper's inference, the deployable student keeps the connector and the teacher's head (logits at
inference = W_t t' + b_t). The SimKD repository instead keeps the student's own classifier for the CE
and KL terms and at test time; the SRRL paper's "softmax regression" is the term through W_t.
"""

import torch.nn.functional as F

from .base import Distiller, register_distiller
from .losses import feature_mse, kd_loss


@register_distiller("srrl")
class SRRL(Distiller):
    paper = 'Yang et al., ICLR 2021'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + KL 1 + feature MSE 1 + logit MSE 1 (DefangChen/SimKD -c 1 -d 1 -b 1)"
    )
    bibtex = (
        '@inproceedings{yang2021knowledge,\n'
        '  title={Knowledge Distillation via Softmax Regression Representation Learning},\n'
        '  author={Yang, Jing and Martinez, Brais and Bulat, Adrian and Tzimiropoulos, Georgios},\n'
        '  booktitle={ICLR},\n'
        '  year={2021}\n'
        '}'
    )
    student_needs = frozenset({"logits", "projected"})
    teacher_needs = frozenset({"logits", "features"})
    projector = "srrl"
    head = "teacher"
    uses_temperature = True
    defaults = {"ce_weight": 1.0, "kd_weight": 1.0, "feat_weight": 1.0, "logit_weight": 1.0}

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_kd": h["kd_weight"] * kd_loss(student["logits"], teacher["logits"], step.temperature),
            "loss_feat": h["feat_weight"] * feature_mse(student["projected"], teacher["features_aligned"]),
            "loss_logit": h["logit_weight"] * F.mse_loss(student["logits"].float(), teacher["logits"].float()),
        }
