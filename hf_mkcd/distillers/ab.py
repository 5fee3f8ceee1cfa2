"""``ab``: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (AAAI 2019), as RepDistiller ``distiller_zoo/AB.py`` + ``helper/pretrain.py``.

Initialisation stage (the first ``init_epochs`` = 30 epochs): only the activation-boundary loss, on the
pre-ReLU stage maps through connectors (ConvReg without ReLU), margin m = 1, deepest stage weight 1:
    L_AB = sum_l 2^(l-L+1) * 3e-3 * (1/B) * sum[(s+m)^2 * 1(s > -m and t <= 0) + (s-m)^2 * 1(s <= m and t > 0)]
Afterwards: CE (+ KD with ``kd_weight`` > 0; RepDistiller's README row uses none).
Differs from RepDistiller on purpose: one run and one optimizer instead of a separate 30-epoch pre-training
loop, so set ``num_train_epochs`` to 30 + the main epochs and shift ``lr_decay_epochs`` by 30.
"""
import torch
import torch.nn as nn

from .base import Distiller, register_distiller
from .losses import kd_loss
from ..models.projectors import ConvRegressor


def ab_stage_loss(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    s, t = source.float(), target.float()
    pos = ((s + margin) ** 2 * ((s > -margin) & (t <= 0)).float())
    neg = ((s - margin) ** 2 * ((s <= margin) & (t > 0)).float())
    return (pos + neg).sum() / s.shape[0]


@register_distiller("ab")
class AB(Distiller):
    student_needs = frozenset({"logits", "preact_stages"})
    teacher_needs = frozenset({"preact_stages", "logits"})
    uses_temperature = True
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "feat_weight": 3e-3, "margin": 1.0, "init_epochs": 30.0}

    def __init__(self, student=None, teacher=None, **hparams):
        super().__init__(student, teacher, **hparams)
        if student is None or teacher is None:
            return
        s, t = self.probe(student, teacher, self.student_needs, self.teacher_needs)
        self.n = min(len(s["preact_stages"]), len(t["preact_stages"])) - 1
        self.connectors = nn.ModuleList(ConvRegressor(cs, ct, out_act="none") for cs, ct in
                                        zip(s["preact_stages"][-self.n:], t["preact_stages"][-self.n:]))

    def forward(self, student, teacher, labels, temperature=4.0, progress=0.0, epoch=0.0):
        h = self.hparams
        if epoch < h["init_epochs"]:
            total = 0.0
            for i, (f_s, f_t, conn) in enumerate(zip(student["preact_stages"][-self.n:],
                                                     teacher["preact_stages"][-self.n:], self.connectors)):
                total = total + 2.0 ** (i - self.n + 1) * ab_stage_loss(conn(f_s), f_t, h["margin"])
            # the head takes no part in this stage: a zero term keeps every parameter in the graph (DDP)
            return {"loss_ab": h["feat_weight"] * total + 0.0 * student["logits"].sum()}
        terms = {"loss_ce": h["ce_weight"] * self.ce(student["logits"], labels)
                 + 0.0 * sum(p.sum() for p in self.connectors.parameters())}  # connectors idle, still in the graph
        if h["kd_weight"]:
            terms["loss_kd"] = h["kd_weight"] * kd_loss(student["logits"], teacher["logits"], temperature)
        return terms
