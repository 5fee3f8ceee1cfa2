"""timm plumbing shared by the CIFAR model zoo.

Every family (ResNet, WRN, VGG, ResNet50, MobileNetV2, ShuffleNetV1/V2) subclasses :class:`CifarNet`
and only says how its stem, its stages and its pre-pool step run.  The base class turns that into
timm's model API (``forward_features`` / ``forward_head`` / ``forward_intermediates`` /
``reset_classifier`` / ``feature_info``), so the distillers never need a model-specific output
contract (the mdistiller ``(logits, feats)`` pitfall).

Module names are fixed by the community checkpoints (``cifar_state_dict_keys.txt``); global pooling
is adaptive (equal to the reference's fixed ``AvgPool2d`` at 32x32, and still defined at 28x28).

This file is also shipped inside every saved student (remote code), so it only imports torch/timm.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model, register_model
from timm.models._features import feature_take_indices

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def cifar_cfg(classifier: str = "fc", **kwargs) -> dict:
    """Pretrained cfg of a CIFAR-100 model: 32x32 input, CIFAR-100 mean/std, no crop."""
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "conv1",
        "classifier": classifier,
        **kwargs,
    }


def init_reference_weights(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """RepDistiller's init of WRN / VGG / MobileNetV2: conv ~ N(0, sqrt(2 / (k*k*C_out))), conv bias 0,
    BN (1, 0), Linear bias 0 and, with ``linear_std``, Linear weight ~ N(0, linear_std)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                m.weight.data.normal_(0, linear_std)
            nn.init.zeros_(m.bias)


def run_stage(stage: nn.Sequential, x: torch.Tensor):
    """Run a stage whose last block has ``forward_preact``: ``(output, pre-activation of the last block)``."""
    for block in stage[:-1]:
        x = block(x)
    return stage[-1].forward_preact(x)


class CifarNet(nn.Module):
    """Base of the CIFAR zoo. Subclasses build their layers, then call :meth:`_finish`.

    Subclasses implement:
      * ``forward_stem(x)``: the stem output (stage 0 of ``feature_info``),
      * ``forward_stage(i, x, preact)``: stage ``i`` (1-based) -> ``(out, preact_or_None)``,
      * ``forward_prepool(x)`` (optional): last stage output -> the map the classifier pools.
    """

    classifier_attr = "fc"
    classifier_in_sequential = False  # MobileNetV2 keeps its Linear at ``classifier.0``
    # modules with parameters that run between the last stage and the pooling (``forward_prepool``): the ones
    # RepDistiller's ``get_feat_modules()`` leaves out besides the classifier (AB's initialisation freezes them)
    prepool_modules: Tuple[str, ...] = ()

    def _finish(self, num_classes: int, num_features: int, feature_info: List[dict], global_pool: str = "avg"):
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.feature_info = feature_info
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self._set_classifier(num_classes)

    # -- head ---------------------------------------------------------------------------------
    def _set_classifier(self, num_classes: int):
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.classifier_in_sequential and num_classes > 0:
            head = nn.Sequential(head)
        setattr(self, self.classifier_attr, head)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self._set_classifier(num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.get_classifier()(x)

    # -- body ---------------------------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.feature_info) - 1

    def forward_prepool(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for i in range(1, self.num_stages + 1):
            x, _ = self.forward_stage(i, x, False)
        return self.forward_prepool(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        preact: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API over ``feature_info`` (stem + stages, post-activation as mdistiller's
        ``feats``). ``preact=True`` returns the pre-activation maps instead (mdistiller's
        ``preact_feats``: the map before the last ReLU of each stage), used by OFD/ReviewKD/AB."""
        assert output_fmt == "NCHW", "CIFAR models only output NCHW feature maps"
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        take = set(take)
        intermediates = []
        x = self.forward_stem(x)
        if 0 in take:
            intermediates.append(x)
        last = max_index if (stop_early or intermediates_only) else self.num_stages
        for i in range(1, last + 1):
            x, pre = self.forward_stage(i, x, preact and i in take)
            if i in take:
                intermediates.append(pre if preact else x)
        if intermediates_only:
            return intermediates
        return self.forward_prepool(x), intermediates

    def stage_preact_bns(self) -> List[nn.BatchNorm2d]:
        """The BatchNorm whose output (before the ReLU) is each stage's pre-activation map, stages 1..N
        (mdistiller's ``get_bn_before_relu``): OFD derives its margins from their affine parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no BN right before each stage's ReLU (OFD is undefined)")

    def forward_stage_maps(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """One pass: (pre-pool map, stage maps, pre-activation stage maps), stem included in both lists."""
        x = self.forward_stem(x)
        post, pre = [x], [x]
        for i in range(1, self.num_stages + 1):
            x, p = self.forward_stage(i, x, True)
            post.append(x)
            pre.append(p)
        return self.forward_prepool(x), post, pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def register_cifar_model(name: str, model_cls: type, cfg: dict, **model_kwargs) -> Callable:
    """Register ``name`` in timm with its CIFAR-100 pretrained cfg.

    Registered once: a saved student's remote code may import these files a second time.
    """
    module = sys.modules[model_cls.__module__]
    if not hasattr(module, "default_cfgs"):
        module.default_cfgs = {}
    module.default_cfgs.update(generate_default_cfgs({name: cfg}))

    def entrypoint(pretrained: bool = False, **kwargs):
        return build_model_with_cfg(
            model_cls,
            name,
            pretrained,
            feature_cfg=dict(feature_cls="getter"),
            **{**model_kwargs, **kwargs},
        )

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = model_cls.__module__
    entrypoint.__doc__ = f"CIFAR {model_cls.__name__} ``{name}`` (mdistiller/RepDistiller layout)."
    if not is_model(name):
        register_model(entrypoint)
    return entrypoint
