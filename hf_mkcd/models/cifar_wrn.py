"""CIFAR Wide ResNets (wrn_16_2, wrn_40_1, wrn_40_2), as RepDistiller/mdistiller ``wrn.py``.

Pre-activation blocks: a stage's output is *before* BN-ReLU, so the map the classifier pools is
``relu(bn1(block3))`` (``forward_prepool``), not the last stage output (docs/zoo.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import CifarNet, cifar_cfg, init_reference_weights, register_cifar_model


class WideBasic(nn.Module):
    """BN-ReLU-conv x2 with a 1x1 ``convShortcut`` when the width changes (reference naming)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # The reference adds the *activated* input when the width changes, the raw input otherwise.
        return out + (x if self.equal_in_out else self.convShortcut(act))


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasic(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class CifarWideResNet(CifarNet):
    prepool_modules = ("bn1",)

    def __init__(
        self,
        depth: int = 40,
        widen_factor: int = 2,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        **kwargs,
    ):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        feature_info = [dict(num_chs=ch[0], reduction=1, module="conv1")] + [
            dict(num_chs=ch[i], reduction=2 ** (i - 1), module=f"block{i}") for i in (1, 2, 3)
        ]
        self._finish(num_classes, ch[3], feature_info, global_pool)
        init_reference_weights(self)

    def forward_stem(self, x):
        return self.conv1(x)

    def stage_preact_bns(self):
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def forward_stage(self, i, x, preact=False):
        x = getattr(self, f"block{i}")(x)
        if not preact:
            return x, None
        # the references' pre-activation map: the BN that follows this stage, before its ReLU. It runs again in
        # the next stage, so in training mode its running statistics move twice per step, as they do in
        # RepDistiller (AB) and mdistiller (docs/methods.md)
        next_bn = self.bn1 if i == 3 else getattr(self, f"block{i + 1}").layer[0].bn1
        return x, next_bn(x)

    def forward_prepool(self, x):
        return F.relu(self.bn1(x))


for _name, _kw in {"cifar_wrn_16_2": (16, 2), "cifar_wrn_40_1": (40, 1), "cifar_wrn_40_2": (40, 2)}.items():
    register_cifar_model(_name, CifarWideResNet, cifar_cfg("fc"), depth=_kw[0], widen_factor=_kw[1])
