"""``reviewkd``: Chen et al., "Distilling Knowledge via Knowledge Review" (CVPR 2021), as mdistiller
``ReviewKD.py`` / ``dvlab-research/ReviewKD``.

Student stage maps (after the stem) + the pooled feature (as a 1x1 map) are fused from deep to shallow
by attention-based fusion (ABF) modules: 1x1 conv + BN to min(512, C_last), a 2-channel sigmoid
attention mixing in the nearest-upsampled residual from the deeper level, 3x3 conv + BN to the teacher's
width. Targets: the teacher's pre-activation stage maps + pooled feature. Hierarchical context loss
per level: MSE plus MSE of 4x4/2x2/1x1 average pools (weights halving), normalised:
    L = CE + w * min(epoch / 20, 1) * sum_levels HCL,   w per pair (5 for res32x4 -> res8x4; recipes)
``epoch`` is the whole, 1-based epoch in progress, as mdistiller counts it (0.05 in the first epoch).
Levels are paired from the deepest one when the two networks have different stage counts.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Distiller, register_distiller
from .losses import warmup_factor


class ABF(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual=None, out_size=None):
        x = self.conv1(x)
        if self.att_conv is not None:
            # att_conv(cat[x, up(r)]) computed as W_x x + up(W_r r): a 1x1 conv over a concatenation is the sum of
            # its halves, and nearest upsampling commutes with a 1x1 conv, so the residual's half runs at the low
            # resolution and nothing is concatenated (the same function and parameters as the reference's ABF)
            conv, c = self.att_conv[0], x.shape[1]
            att = F.conv2d(x, conv.weight[:, :c], conv.bias) + F.interpolate(
                F.conv2d(residual, conv.weight[:, c:]), size=x.shape[-2:], mode="nearest"
            )
            z = self.att_conv[1](att)
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            x = torch.addcmul(x * z[:, 0:1], residual, z[:, 1:2])
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def hcl_loss(student_maps, teacher_maps) -> torch.Tensor:
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps):
        fs, ft = fs.float(), ft.float()
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += weight
        total = total + loss / norm
    return total


def _levels(outputs, stages_key):
    pooled = outputs["pooled"]
    return list(outputs[stages_key][1:]) + [pooled.reshape(*pooled.shape, 1, 1) if pooled.ndim == 2 else pooled]


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    paper = 'Chen et al., CVPR 2021'
    recipe_note = "CE 1 + w x warm-up(20 epochs) x HCL"  # the reference setting (recipe comments)
    bibtex = (
        '@inproceedings{chen2021distilling,\n'
        '  title={Distilling Knowledge via Knowledge Review},\n'
        '  author={Chen, Pengguang and Liu, Shu and Zhao, Hengshuang and Jia, Jiaya},\n'
        '  booktitle={CVPR},\n'
        '  year={2021}\n'
        '}'
    )
    student_needs = frozenset({"logits", "stages", "pooled"})
    teacher_needs = frozenset({"preact_stages", "pooled"})
    needs_pair = True
    defaults = {"ce_weight": 1.0, "feat_weight": 1.0, "warmup_epochs": 20.0}

    def __init__(self, pair=None, temperature=None, **hparams):
        super().__init__(pair, temperature, **hparams)
        s, t = pair.student_shapes, pair.teacher_shapes
        s_shapes = list(s["stages"][1:]) + [(s["pooled"][0], 1, 1)]
        t_shapes = list(t["preact_stages"][1:]) + [(t["pooled"][0], 1, 1)]
        self.n = n = min(len(s_shapes), len(t_shapes))
        s_shapes, t_shapes = s_shapes[-n:], t_shapes[-n:]
        mid = min(512, s_shapes[-1][0])
        abfs = [ABF(cs[0], mid, ct[0], fuse=i < n - 1) for i, (cs, ct) in enumerate(zip(s_shapes, t_shapes))]
        self.abfs = nn.ModuleList(abfs[::-1])  # deepest first
        self.out_sizes = [tuple(ct[1:]) for ct in t_shapes][::-1]

    def forward(self, student, teacher, batch, step):
        h = self.hparams
        feats = _levels(student, "stages")[-self.n :][::-1]
        results = []
        out, residual = self.abfs[0](feats[0], out_size=self.out_sizes[0])
        results.append(out)
        for f, abf, size in zip(feats[1:], self.abfs[1:], self.out_sizes[1:]):
            out, residual = abf(f, residual, size)
            results.insert(0, out)
        targets = _levels(teacher, "preact_stages")[-self.n :]
        warm = warmup_factor(step.epoch, h["warmup_epochs"])
        return {
            "loss_ce": h["ce_weight"] * self.ce(student["logits"], batch["labels"]),
            "loss_feat": h["feat_weight"] * warm * hcl_loss(results, targets),
        }
