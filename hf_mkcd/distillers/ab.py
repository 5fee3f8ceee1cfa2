"""``ab``: Heo et al., "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (AAAI 2019), as RepDistiller (``distiller_zoo/AB.py``, ``models/util.py`` ``Connector``,
``helper/pretrain.py``, ``train_student.py``).

Initialisation stage (epochs 1..``init_epochs``, 30): only the activation-boundary loss, on the
pre-ReLU stage maps (after the stem) through connectors, margin m = 1, deepest stage weight 1:
    L_AB = sum_l 2^(l-L+1) * 3e-3 * (1/B) * sum[(s+m)^2 * 1(s > -m and t <= 0) + (s-m)^2 * 1(s <= m and t > 0)]
Main stage: CE (+ KD with ``kd_weight`` > 0; RepDistiller's README row uses none).

As the reference does:
* a connector is the identity where student and teacher maps have the same channels and height
  (all three stages of resnet8x4 -> resnet32x4), else a ConvReg without ReLU;
* the initialisation trains the connectors and the modules RepDistiller's ``get_feat_modules()`` returns:
  the student's stem and stages. The classifier and the layers between the last stage and the pooling
  (``prepool_modules``: WRN's final ``bn1``, MobileNetV2's ``conv2``, ShuffleNetV2's ``conv2``/``bn2``) are
  left out: no gradient, hence no weight decay or momentum, and eval mode (the reference calls
  ``model_s.eval()`` and then ``init_modules.train()``), so their BN statistics do not move and WRN's
  last pre-activation map is normalised with running statistics, as in the reference. The feature
  modules' own BN layers are in train mode (``init_modules`` holds them, not copies);
* afterwards the connectors are idle;
* each stage starts with a fresh optimizer state (the trainer clears momentum when
  :meth:`stage` changes); the LR is the base LR throughout the initialisation.
One run instead of two loops: set ``num_train_epochs`` to 30 + the main epochs and shift
``lr_decay_epochs`` by 30 (the recipes do).
"""

import torch
import torch.nn as nn

from .base import Distiller, register_distiller
from .losses import kd_loss
from ..models.projectors import ConvRegressor


def ab_stage_loss(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    s, t = source.float(), target.float()
    pos = (s + margin) ** 2 * ((s > -margin) & (t <= 0)).float()
    neg = (s - margin) ** 2 * ((s <= margin) & (t > 0)).float()
    return (pos + neg).sum() / s.shape[0]


def ab_connector(student_shape, teacher_shape) -> nn.Module:
    """RepDistiller's ``Connector``: identity for equal channels and height, else ConvReg (conv + BN)."""
    if tuple(student_shape[:2]) == tuple(teacher_shape[:2]):
        return nn.Identity()
    return ConvRegressor(student_shape, teacher_shape, out_act="none")


@register_distiller("ab")
class AB(Distiller):
    paper = 'Heo et al., AAAI 2019'
    recipe_note = (  # the reference setting (recipe comments)
        "activation-boundary initialisation, then CE (RepDistiller -a 0 -b 1)"
    )
    bibtex = (
        '@inproceedings{heo2019knowledge,\n'
        '  title={Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons},\n'
        '  author={Heo, Byeongho and Lee, Minsik and Yun, Sangdoo and Choi, Jin Young},\n'
        '  booktitle={AAAI},\n'
        '  year={2019}\n'
        '}'
    )
    student_needs = frozenset({"logits", "preact_stages"})
    teacher_needs = frozenset({"preact_stages", "logits"})
    needs_pair = True
    uses_temperature = True
    defaults = {"ce_weight": 1.0, "kd_weight": 0.0, "feat_weight": 3e-3, "margin": 1.0, "init_epochs": 30.0}

    def __init__(self, pair=None, temperature=None, **hparams):
        super().__init__(pair, temperature, **hparams)
        s, t = pair.student_shapes["preact_stages"], pair.teacher_shapes["preact_stages"]
        self.n = min(len(s), len(t)) - 1
        self.connectors = nn.ModuleList(ab_connector(cs, ct) for cs, ct in zip(s[-self.n :], t[-self.n :]))
        backbone = pair.student.backbone
        head = [n for n, m in backbone.named_modules() if m is backbone.get_classifier()][:1]
        left_out = head + list(getattr(backbone, "prepool_modules", ()))
        self._init_frozen = tuple(f"student.backbone.{n}" for n in left_out)
        self._main_frozen = ("distiller.connectors",)

    def stage(self, epoch: int) -> str:
        return "init" if epoch <= self.hparams["init_epochs"] else "main"

    def frozen_modules(self, step):
        return self._init_frozen if self.stage(step.epoch) == "init" else self._main_frozen

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        # every parameter stays in the graph (DDP); the idle ones get no update (frozen_modules)
        idle_connectors = 0.0 * sum(p.sum() for p in self.connectors.parameters())
        if self.stage(step.epoch) == "init":
            total = 0.0
            for i, (f_s, f_t, conn) in enumerate(
                zip(student["preact_stages"][-self.n :], teacher["preact_stages"][-self.n :], self.connectors)
            ):
                total = total + 2.0 ** (i - self.n + 1) * ab_stage_loss(conn(f_s), f_t, h["margin"])
            return {"loss_ab": h["feat_weight"] * total + 0.0 * student["logits"].sum()}
        terms = {"loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]) + idle_connectors}
        if h["kd_weight"]:
            terms["loss_kd"] = h["kd_weight"] * kd_loss(student["logits"], teacher["logits"], step.temperature)
        return terms
