"""CIFAR ResNets: resnet20/32/56/110, resnet8x4/32x4 (3 stages) and the CIFAR ResNet50 (4 stages).

Same layers, order and initialisation as RepDistiller/mdistiller ``resnet.py`` / ``resnetv2.py``:
3x3 stem without max-pool, post-activation blocks, 1x1-conv + BN shortcut when shapes change.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import CifarNet, cifar_cfg, register_cifar_model, run_stage


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; ``forward_preact`` also returns the sum before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "downsample"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, _shortcut(in_planes, planes * self.expansion, stride))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward_preact(self, x: torch.Tensor):
        shortcut = getattr(self, self.shortcut_name)
        preact = self.residual(x) + (x if shortcut is None else shortcut(x))
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[0]


class Bottleneck(BasicBlock):
    """1x1-3x3-1x1 bottleneck (expansion 4) of the CIFAR ResNet50."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut"):
        nn.Module.__init__(self)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, _shortcut(in_planes, planes * 4, stride))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def _shortcut(in_planes: int, out_planes: int, stride: int):
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class CifarResNet(CifarNet):
    """CIFAR ResNet. ``depth`` = 6n+2 with ``widths`` = (stem, stage1, stage2, stage3) for BasicBlock
    (RepDistiller ``ResNet``); ``block="bottleneck"`` with ``layers`` gives the 4-stage ResNet50 of
    ``resnetv2.py`` (64-channel stem, classifier named ``linear``, shortcut named ``shortcut``)."""

    def __init__(
        self,
        depth: int = 20,
        widths=(16, 16, 32, 64),
        block: str = "basic",
        layers=None,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        **kwargs,
    ):
        super().__init__()
        if block == "basic":
            assert (depth - 2) % 6 == 0, "BasicBlock CIFAR ResNet depth must be 6n+2"
            block_cls, shortcut_name = BasicBlock, "downsample"
            layers = [(depth - 2) // 6] * 3
            stage_planes, stem = list(widths[1:]), widths[0]
        else:
            block_cls, shortcut_name = Bottleneck, "shortcut"
            self.classifier_attr = "linear"
            stage_planes, stem = [64, 128, 256, 512][: len(layers)], 64
        self.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes, reduction = stem, 1
        feature_info = [dict(num_chs=stem, reduction=1, module="bn1")]
        for i, (planes, n) in enumerate(zip(stage_planes, layers)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(n):
                blocks.append(block_cls(in_planes, planes, stride if j == 0 else 1, shortcut_name))
                in_planes = planes * block_cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            feature_info.append(dict(num_chs=in_planes, reduction=reduction, module=f"layer{i + 1}"))
        self._finish(num_classes, in_planes, feature_info, global_pool)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def stage_preact_bns(self):
        last = "bn3" if isinstance(self.layer1[0], Bottleneck) else "bn2"
        return [getattr(getattr(self, f"layer{i}")[-1], last) for i in range(1, self.num_stages + 1)]

    def forward_stage(self, i, x, preact=False):
        return run_stage(getattr(self, f"layer{i}"), x)


_RESNETS = {
    "cifar_resnet20": dict(depth=20),
    "cifar_resnet32": dict(depth=32),
    "cifar_resnet56": dict(depth=56),
    "cifar_resnet110": dict(depth=110),
    "cifar_resnet8x4": dict(depth=8, widths=(32, 64, 128, 256)),
    "cifar_resnet32x4": dict(depth=32, widths=(32, 64, 128, 256)),
}
for _name, _kw in _RESNETS.items():
    register_cifar_model(_name, CifarResNet, cifar_cfg("fc"), **_kw)
register_cifar_model("cifar_resnet50", CifarResNet, cifar_cfg("linear"), block="bottleneck", layers=(3, 4, 6, 3))
