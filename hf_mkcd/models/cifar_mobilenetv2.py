"""CIFAR MobileNetV2 (``mobile_half``: expansion 6, width 0.5), as RepDistiller/mdistiller ``mobilenetv2.py``.

The classifier pools the 1x1-expanded map ``conv2`` (1280x2x2), not the last stage (160x2x2):
``forward_prepool`` applies ``conv2`` (the map the classifier pools, docs/zoo.md). Blocks end in a linear BN
(no ReLU), so a stage's pre-activation map is its output.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .cifar_common import CifarNet, init_reference_weights, cifar_cfg, register_cifar_model


def _conv_bn_relu(in_chans: int, out_chans: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_chans),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(CifarNet):
    prepool_modules = ("conv2",)
    classifier_attr = "classifier"
    classifier_in_sequential = True
    # (expansion, channels, repeats, stride); expansion None = the model's ``expand``
    SETTING = [
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    ]
    # feature stage i ends after ``blocks[STAGE_ENDS[i]]`` (mdistiller's f1..f4)
    STAGE_ENDS = (1, 2, 4, 6)

    def __init__(
        self,
        expand: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        prepool: bool = True,
        **kwargs,
    ):
        """``prepool=False``: no final 1x1 expansion (``conv2``); the last block's map (160 channels at width 0.5) is
        the feature map, as SimKD's student reads it (``feat_s[-2]``)."""
        super().__init__()
        if not prepool:
            self.prepool_modules = ()
        chans = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, chans, 3, 2)
        self.blocks = nn.ModuleList()
        widths = []
        for t, c, n, s in self.SETTING:
            out = int(c * width_mult)
            layers = []
            for j in range(n):
                layers.append(InvertedResidual(chans, out, s if j == 0 else 1, expand if t is None else t))
                chans = out
            self.blocks.append(nn.Sequential(*layers))
            widths.append(out)
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(chans, last_channel, 1, 1) if prepool else nn.Identity()
        last_channel = last_channel if prepool else chans
        reductions = (2, 4, 8, 16)
        feature_info = [dict(num_chs=int(32 * width_mult), reduction=2, module="conv1")] + [
            dict(num_chs=widths[e], reduction=r, module=f"blocks.{e}") for e, r in zip(self.STAGE_ENDS, reductions)
        ]
        self._finish(num_classes, last_channel, feature_info, global_pool)
        init_reference_weights(self, linear_std=0.01)

    def stage_preact_bns(self):
        return [self.blocks[e][-1].conv[-1] for e in self.STAGE_ENDS]

    def forward_stem(self, x):
        return self.conv1(x)

    def forward_stage(self, i, x, preact=False):
        start = 0 if i == 1 else self.STAGE_ENDS[i - 2] + 1
        for j in range(start, self.STAGE_ENDS[i - 1] + 1):
            x = self.blocks[j](x)
        return x, x

    def forward_prepool(self, x):
        return self.conv2(x)


register_cifar_model(
    "cifar_mobilenetv2", CifarMobileNetV2, cifar_cfg("classifier.0", first_conv="conv1.0"), expand=6, width_mult=0.5
)
