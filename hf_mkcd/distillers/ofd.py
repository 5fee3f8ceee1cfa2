"""``ofd``: Heo et al., "A Comprehensive Overhaul of Feature Distillation" (ICCV 2019), as mdistiller ``OFD.py``.

Pre-ReLU stage maps (after the stem). Each student map goes through a connector (1x1 conv, no bias, +
BN; conv ~ N(0, sqrt(2/n))); the teacher map is average-pooled to the student's size; a partial L2
ignores what the teacher's ReLU would zero anyway, with a per-channel margin m from the teacher's BN
before the ReLU (sigma = |gamma|, mu = beta):
    m = mu - sigma * exp(-(mu/sigma)^2 / 2) / (sqrt(2 pi) * Phi(-mu/sigma))   if Phi(-mu/sigma) > 1e-3, else -3 sigma
    t' = max(t, m);  loss_i = sum((s - t')^2 * [(s > t') or (t' > 0)]) / B;  L = CE + 1e-3 * sum_i loss_i / 2^(n-i-1)
Stages are paired from the deepest one. Differs from mdistiller on purpose: its ``OFD.train()`` puts the
teacher's BN in train mode during distillation; here the teacher stays in eval mode (the paper's frozen teacher).
"""

import math

import torch
import torch.nn as nn

from .base import Distiller, register_distiller


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    std, mean = bn.weight.detach().abs().float(), bn.bias.detach().float()
    z = mean / std.clamp_min(1e-12)
    cdf = torch.special.ndtr(-z)
    m = mean - std * torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) / cdf.clamp_min(1e-12)
    return torch.where(cdf > 1e-3, m, -3 * std)


def ofd_stage_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    target = torch.maximum(target.float(), margin.view(1, -1, 1, 1))
    source = source.float()
    mask = ((source > target) | (target > 0)).float()
    return ((source - target) ** 2 * mask).sum() / source.shape[0]


def connector(c_in: int, c_out: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / c_out))  # n = k*k*out_channels, k = 1
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def teacher_stage_bns(teacher: nn.Module, method: str):
    name = getattr(teacher, "pretrained_cfg", {}).get("architecture", type(teacher).__name__)
    if not hasattr(teacher, "stage_preact_bns"):
        raise ValueError(
            f"{method}: the teacher {name} does not expose the BN before each stage's ReLU "
            "(only the hf_mkcd CIFAR zoo does); choose a method that needs no BN statistics"
        )
    try:
        return teacher.stage_preact_bns()
    except NotImplementedError as err:
        raise ValueError(f"{method}: {err}; choose another teacher or method") from err


@register_distiller("ofd")
class OFD(Distiller):
    paper = 'Heo et al., ICCV 2019'
    recipe_note = (  # the reference setting (recipe comments)
        "CE 1 + 0.001 x partial L2 with the teacher's BN margins (mdistiller)"
    )
    bibtex = (
        '@inproceedings{heo2019comprehensive,\n'
        '  title={A Comprehensive Overhaul of Feature Distillation},\n'
        '  author={Heo, Byeongho and Kim, Jeesoo and Yun, Sangdoo and Park, Hyojin and Kwak, Nojun '
        'and Choi, Jin Young},\n'
        '  booktitle={ICCV},\n'
        '  year={2019}\n'
        '}'
    )
    student_needs = frozenset({"logits", "preact_stages"})
    teacher_needs = frozenset({"preact_stages"})
    needs_pair = True
    defaults = {"ce_weight": 1.0, "feat_weight": 1e-3}

    def __init__(self, pair=None, temperature=None, **hparams):
        super().__init__(pair, temperature, **hparams)
        bns = teacher_stage_bns(pair.teacher, "ofd")
        s, t = pair.student_shapes["preact_stages"], pair.teacher_shapes["preact_stages"]
        n = min(len(s), len(t)) - 1  # stages after the stem
        self.connectors = nn.ModuleList(connector(cs[0], ct[0]) for cs, ct in zip(s[-n:], t[-n:]))
        for i, bn in enumerate(bns[-n:]):
            self.register_buffer(f"margin{i}", ofd_margin(bn), persistent=False)
        self.n = n

    def forward(self, student, teacher, batch, step):
        h, total = self.hparams, 0.0
        for i, (f_s, f_t, conn) in enumerate(
            zip(student["preact_stages"][-self.n :], teacher["preact_stages"][-self.n :], self.connectors)
        ):
            f_t = nn.functional.adaptive_avg_pool2d(f_t, f_s.shape[-2:]) if f_t.shape[-2:] != f_s.shape[-2:] else f_t
            total = total + ofd_stage_loss(conn(f_s), f_t, getattr(self, f"margin{i}")) / 2 ** (self.n - i - 1)
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_feat": h["feat_weight"] * total,
        }
