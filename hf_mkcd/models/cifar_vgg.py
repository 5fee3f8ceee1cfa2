"""CIFAR VGG with BatchNorm (vgg8 = cfg "S", vgg13 = cfg "B"), as RepDistiller/mdistiller ``vgg.py``.

Five conv blocks; max-pool after blocks 0-2 (block 3 is pooled only for 64x64 inputs, as in the
reference), so at 32x32 blocks 3 and 4 both run at 4x4. The pre-pool map is relu(block4).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import CifarNet, init_reference_weights, cifar_cfg, register_cifar_model

VGG_CFGS = {
    "S": [[64], [128], [256], [512], [512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


def _make_block(widths, in_chans: int) -> nn.Sequential:
    """conv(bias)-BN-ReLU repeated; the trailing ReLU is dropped so the block ends pre-activation."""
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_chans, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chans = w
    return nn.Sequential(*layers[:-1])


class CifarVGG(CifarNet):
    classifier_attr = "classifier"

    def __init__(
        self, vgg_cfg: str = "S", num_classes: int = 100, in_chans: int = 3, global_pool: str = "avg", **kwargs
    ):
        super().__init__()
        widths = VGG_CFGS[vgg_cfg]
        prev = in_chans
        for i, w in enumerate(widths):
            setattr(self, f"block{i}", _make_block(w, prev))
            prev = w[-1]
        self.pool = nn.MaxPool2d(2, 2)
        feature_info = [dict(num_chs=w[-1], reduction=min(2**i, 8), module=f"block{i}") for i, w in enumerate(widths)]
        self._finish(num_classes, widths[-1][-1], feature_info, global_pool)
        init_reference_weights(self, linear_std=0.01)

    def stage_preact_bns(self):
        return [getattr(self, f"block{i}")[-1] for i in range(1, self.num_stages + 1)]

    def forward_stem(self, x):
        self._input_h = x.shape[2]
        return F.relu(self.block0(x))

    def forward_stage(self, i, x, preact=False):
        if i <= 3 or self._input_h == 64:
            x = self.pool(x)
        pre = getattr(self, f"block{i}")(x)
        return F.relu(pre), pre


register_cifar_model("cifar_vgg8", CifarVGG, cifar_cfg("classifier", first_conv="block0.0"), vgg_cfg="S")
register_cifar_model("cifar_vgg13", CifarVGG, cifar_cfg("classifier", first_conv="block0.0"), vgg_cfg="B")
