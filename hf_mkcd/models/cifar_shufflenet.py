"""CIFAR ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x), as RepDistiller/mdistiller
``ShuffleNetv1.py`` / ``ShuffleNetv2.py``: 1x1 stem without down-sampling, three stages.

ShuffleNetV2's classifier pools ``relu(bn2(conv2(layer3)))`` (1024x4x4), not layer3 (464x4x4).
Its pre-activation map follows the reference: ``cat(x1, preact)`` *before* the channel shuffle.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar_common import CifarNet, cifar_cfg, register_cifar_model, run_stage


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.g = 1 if in_planes == 24 else groups  # the first block after the stem is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward_preact(self, x: torch.Tensor):
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact

    def forward(self, x):
        return self.forward_preact(x)[0]


class ShuffleV2Down(nn.Module):
    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        mid = out_chans // 2
        self.conv1 = nn.Conv2d(in_chans, in_chans, 3, 2, 1, groups=in_chans, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chans)
        self.conv2 = nn.Conv2d(in_chans, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_chans, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2Block(nn.Module):
    def __init__(self, chans: int):
        super().__init__()
        half = chans // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward_preact(self, x):
        x1, x2 = x.chunk(2, dim=1)
        pre = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        out = channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
        return out, torch.cat([x1, pre], 1)

    def forward(self, x):
        return self.forward_preact(x)[0]


class CifarShuffleNet(CifarNet):
    classifier_attr = "linear"

    def __init__(
        self,
        version: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        prepool: bool = True,
        **kwargs,
    ):
        """``prepool=False`` (V2): no final 1x1 expansion; the last stage's map (464 channels) is the feature map, as
        SimKD's student reads it (``feat_s[-2]``)."""
        super().__init__()
        self.version = version
        self.prepool = version == 2 and prepool
        self.prepool_modules = ("conv2", "bn2") if self.prepool else ()
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        feature_info = [dict(num_chs=24, reduction=1, module="bn1")]
        if version == 1:
            widths, repeats, groups = (240, 480, 960), (4, 8, 4), 3
            for i, (w, n) in enumerate(zip(widths, repeats)):
                blocks = []
                for j in range(n):
                    # the strided first block concatenates its pooled input: it only adds w - in_planes
                    blocks.append(ShuffleV1Block(in_planes, w - in_planes if j == 0 else w, 2 if j == 0 else 1, groups))
                    in_planes = w
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                feature_info.append(dict(num_chs=w, reduction=2 ** (i + 1), module=f"layer{i + 1}"))
            num_features = widths[-1]
        else:
            widths, repeats, num_features = (116, 232, 464), (3, 7, 3), 1024
            for i, (w, n) in enumerate(zip(widths, repeats)):
                setattr(
                    self,
                    f"layer{i + 1}",
                    nn.Sequential(ShuffleV2Down(in_planes, w), *[ShuffleV2Block(w) for _ in range(n)]),
                )
                in_planes = w
                feature_info.append(dict(num_chs=w, reduction=2 ** (i + 1), module=f"layer{i + 1}"))
            if self.prepool:
                self.conv2 = nn.Conv2d(in_planes, num_features, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(num_features)
            else:
                num_features = in_planes
        self._finish(num_classes, num_features, feature_info, global_pool)

    def forward_stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def forward_stage(self, i, x, preact=False):
        return run_stage(getattr(self, f"layer{i}"), x)

    def forward_prepool(self, x):
        return F.relu(self.bn2(self.conv2(x))) if self.prepool else x


register_cifar_model("cifar_shufflev1", CifarShuffleNet, cifar_cfg("linear"), version=1)
register_cifar_model("cifar_shufflev2", CifarShuffleNet, cifar_cfg("linear"), version=2)
