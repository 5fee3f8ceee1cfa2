"""The deployable student: timm backbone -> optional projector -> head, as a ``PreTrainedModel``.

For MKCD/SimKD/SRRL the head is the teacher's classifier, copied and frozen (stored as buffers, so
no optimizer, DDP or ``requires_grad`` toggle can ever train it); the student's logits are
``teacher_fc(pool(projector(backbone(x))))`` at train *and* inference time. A plain student
(``head="student"``, no projector) is just a timm classifier with the Hub API around it.

Shipped inside every saved student (``save_pretrained`` copies this file and its relative imports),
so a directory loads with ``trust_remote_code=True`` where hf_mkcd is not installed: only torch,
timm and transformers are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .cifar_zoo import CIFAR100_MEAN, CIFAR100_STD  # noqa: F401  (import registers the CIFAR zoo in timm)
from .configuration_mkcd_student import MKCDStudentConfig
from .helpers import (
    FrozenLinear,
    check_num_classes,
    create_timm_model,
    first_conv_in_channels,
    fit_channels,
    match_channels,
    teacher_linear_head,
)
from .projectors import build_projector, output_activation, projector_options


@dataclass
class DistilledImageClassifierOutput(ModelOutput):
    """Logits, plus (with ``output_features=True``) the backbone's pre-pool map and its projection."""

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    features: Optional[torch.Tensor] = None
    projected_features: Optional[torch.Tensor] = None


class MKCDStudentPreTrainedModel(PreTrainedModel):
    config_class = MKCDStudentConfig
    base_model_prefix = "mkcd_student"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _no_split_modules = []

    def _init_weights(self, module: nn.Module):
        # Keep timm's own init for the backbone (transformers' default would overwrite it with
        # N(0, 0.02)); only rebuild timm's non-persistent buffers, which from_pretrained leaves empty.
        if getattr(module, "_is_timm_module", False):
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
        elif hasattr(module, "reset_parameters") and not isinstance(module, FrozenLinear):
            module.reset_parameters()
            if getattr(module, "_zero_init", False):  # a residual branch's last BN starts at zero
                torch.nn.init.zeros_(module.weight)

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        self.backbone.set_grad_checkpointing(enable)


class MKCDStudentForImageClassification(MKCDStudentPreTrainedModel):
    def __init__(self, config: MKCDStudentConfig):
        super().__init__(config)
        own_head = config.head == "student"
        kwargs = dict(config.backbone_kwargs or {})
        kwargs.setdefault("in_chans", config.num_channels)
        self.backbone = create_timm_model(config.backbone, num_classes=config.num_labels if own_head else 0, **kwargs)
        for module in self.backbone.modules():
            module._is_timm_module = True
        self.projector = None
        if config.projector is not None:
            options = dict(config.projector_kwargs or {})
            if config.projector == "mkcd":  # saved before `resample` existed: 2x ratios were resampled by convs then
                options.setdefault("resample", "learned")
            self.projector = build_projector(
                config.projector, config.student_feature_shape, config.teacher_feature_shape, **options
            )
        self.head_pool = self.classifier = None
        if not own_head:
            self.head_pool = SelectAdaptivePool2d(pool_type=config.head_pool, flatten=True)
            self.classifier = FrozenLinear(config.teacher_feature_shape[0], config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        output_features: bool = False,
        return_dict: Optional[bool] = None,
    ) -> Union[DistilledImageClassifierOutput, tuple]:
        features = self.backbone.forward_features(match_channels(pixel_values, self.config.num_channels))
        projected = self.projector(features) if self.projector is not None else None
        logits = self.logits_from(features, projected)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        out = DistilledImageClassifierOutput(
            loss=loss,
            logits=logits,
            features=features if output_features else None,
            projected_features=projected if output_features else None,
        )
        return out if return_dict is not False else out.to_tuple()

    def logits_from(self, features: torch.Tensor, projected: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits from the backbone's pre-pool map (and its projection, when the head is the teacher's)."""
        if self.classifier is not None:
            return self.classifier(self.head_pool(projected if projected is not None else features))
        return self.backbone.forward_head(features)

    # -- building from a teacher ----------------------------------------------------------------
    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        student: str,
        projector: Optional[str] = "mkcd",
        head: str = "teacher",
        projector_kwargs: Optional[dict] = None,
        backbone_kwargs: Optional[dict] = None,
        num_labels: Optional[int] = None,
        id2label: Optional[dict] = None,
        image_size: Optional[int] = None,
        image_mean=None,
        image_std=None,
        teacher_name: Optional[str] = None,
        student_map: Optional[str] = None,
        crop_pct: Optional[float] = None,
    ) -> "MKCDStudentForImageClassification":
        """Build a student for ``teacher`` (a timm model): probe both feature maps, size the projector,
        copy the teacher's classifier as the frozen head (``head="teacher"``).

        Raises before anything trains when the teacher head's class count differs from ``num_labels``
        or ``id2label``, when the teacher gives no convolutional map, or when its head is not
        global pool + linear (SimKD-style reuse is then undefined).
        """
        try:  # a transformers classifier is read through timm's interface (hf_mkcd.teacher)
            from hf_mkcd.teacher import as_timm_teacher

            teacher = as_timm_teacher(teacher)
        except ImportError:  # this file runs as remote code where hf_mkcd is not installed: timm teachers only
            pass
        fc = teacher_linear_head(teacher)
        n_teacher = fc.out_features
        check_num_classes(
            **{
                "teacher": n_teacher,
                "student's num_labels": num_labels,
                "student's id2label": len(id2label) if id2label else None,
            }
        )
        num_channels = first_conv_in_channels(teacher)
        cfg = getattr(teacher, "pretrained_cfg", None) or {}
        image_size = image_size or cfg.get("input_size", (3, 32, 32))[-1]
        backbone_kwargs = dict(backbone_kwargs or {})
        backbone_kwargs.setdefault("in_chans", num_channels)
        probe_backbone = create_timm_model(student, num_classes=0, **backbone_kwargs)
        student_map = student_map or default_student_map(projector, head)
        if student_map not in STUDENT_MAPS:
            raise ValueError(f"student_map {student_map!r}: choose one of {', '.join(STUDENT_MAPS)}")
        if student_map == "last_block" and getattr(probe_backbone, "prepool_modules", ()):
            backbone_kwargs["prepool"] = False  # recorded in the config: a saved student rebuilds the same backbone
            probe_backbone = create_timm_model(student, num_classes=0, **backbone_kwargs)
        probe = torch.randn(2, num_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
        f_t, f_s = _probe(teacher, probe), _probe(probe_backbone, probe)
        needs_maps = projector is not None or head == "teacher"
        for who, f, name in (("teacher", f_t, teacher_name or type(teacher).__name__), ("student", f_s, student)):
            if needs_maps and f.ndim != 4:
                raise ValueError(
                    f"the {who} {name} gives features of shape {tuple(f.shape)}, not a (B, C, H, W) map: "
                    "a feature projector / reused head needs a convolutional feature map (methods that read logits "
                    "or pooled features work with it: kd, dkd, dist, ctkd, mlkd, rkd, crd)."
                )
        pool_type = getattr(getattr(teacher, "global_pool", None), "pool_type", "avg") or "avg"
        if head == "teacher":
            with torch.no_grad():
                was_training = teacher.training
                teacher.eval()
                t_logits = teacher.forward_head(teacher.forward_features(probe.to(fc.weight.device)))
                teacher.train(was_training)
                mine = F.linear(
                    SelectAdaptivePool2d(pool_type=pool_type, flatten=True)(f_t.to(fc.weight.device)),
                    fc.weight,
                    fc.bias,
                )
            if not torch.allclose(t_logits, mine, atol=1e-4, rtol=1e-4):
                raise ValueError(
                    "the teacher's head is not global pooling + its linear classifier (forward_head does more, e.g. a "
                    "norm or an MLP), so it cannot be reused on projected features; use head='student'."
                )
        projector_kwargs = dict(projector_kwargs or {})
        if projector is not None and "out_act" in projector_options(projector):
            # a final ReLU only where the teacher's map is post-ReLU (every CIFAR zoo model's pre-pool map)
            projector_kwargs.setdefault("out_act", output_activation(f_t))
        if projector is not None and "resample" in projector_options(projector):
            # recorded, so that a saved student keeps its architecture when the code's default changes
            projector_kwargs.setdefault("resample", projector_options(projector)["resample"])
        shapes = (
            dict(student_feature_shape=list(f_s.shape[1:]), teacher_feature_shape=list(f_t.shape[1:]))
            if needs_maps
            else {}
        )
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(n_teacher)}
        mean = image_mean or cfg.get("mean", CIFAR100_MEAN)
        std = image_std or cfg.get("std", CIFAR100_STD)
        config = MKCDStudentConfig(
            backbone=student,
            backbone_kwargs=backbone_kwargs or None,
            projector=projector,
            projector_kwargs=projector_kwargs or None,
            **shapes,
            head=head,
            head_pool=pool_type,
            teacher=teacher_name,
            image_size=image_size,
            num_channels=num_channels,
            image_mean=list(fit_channels(mean, num_channels)),
            image_std=list(fit_channels(std, num_channels)),
            crop_pct=crop_pct,
            id2label={int(k): v for k, v in id2label.items()},
        )
        model = cls(config)
        model.backbone.load_state_dict(probe_backbone.state_dict(), strict=False)
        if head == "teacher":
            model.classifier = FrozenLinear.from_linear(fc).to(model.classifier.weight.device)
        return model

    # -- preprocessing and export -------------------------------------------------------------------
    def image_processor(self):
        """The image processor of the training run's evaluation input: the image resized whole (``ViTImageProcessor``)
        for CIFAR-sized data, the shorter side resized and the centre cropped at ``crop_pct`` for photos
        (``BitImageProcessor``, timm's evaluation transform); then rescaled and normalised."""
        from transformers import BitImageProcessor, ViTImageProcessor

        cfg = self.config
        data_cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = cfg.image_mean or fit_channels(data_cfg.get("mean", CIFAR100_MEAN), cfg.num_channels)
        std = cfg.image_std or fit_channels(data_cfg.get("std", CIFAR100_STD), cfg.num_channels)
        common = dict(image_mean=list(mean), image_std=list(std), do_convert_rgb=cfg.num_channels == 3)
        if getattr(cfg, "crop_pct", None):
            return BitImageProcessor(
                size={"shortest_edge": int(cfg.image_size / cfg.crop_pct)},
                resample=2,  # PIL bilinear, as the training run's evaluation
                do_center_crop=True,
                crop_size={"height": cfg.image_size, "width": cfg.image_size},
                **common,
            )
        return ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}, resample=2, **common)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` + an image processor when none is there yet, so that
        ``pipeline("image-classification", model=save_directory)`` works on the directory."""
        import os

        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and not os.path.exists(
            os.path.join(save_directory, "preprocessor_config.json")
        ):
            self.image_processor().save_pretrained(save_directory)

    def export_timm(self, save_directory: str):
        """Write a plain student in timm's Hub layout, which both ``timm.create_model("local-dir:...")``
        and transformers' ``TimmWrapperForImageClassification`` read (no custom code; a ``cifar_*``
        architecture still needs ``import hf_mkcd`` in the loading process to be known to timm)."""
        import copy
        import json
        import os

        from timm.models import save_for_hf

        if self.projector is not None or self.classifier is not None:
            raise ValueError(
                "export_timm needs a plain student (no projector, its own head); a student with a projector or a "
                "reused teacher head is not a single timm model: use save_pretrained."
            )
        cfg = self.config
        self.backbone.pretrained_cfg = {
            **(getattr(self.backbone, "pretrained_cfg", None) or {}),
            "input_size": (cfg.num_channels, cfg.image_size, cfg.image_size),
            "mean": tuple(self.image_processor().image_mean),
            "std": tuple(self.image_processor().image_std),
            "num_classes": cfg.num_labels,
            # the training run's evaluation transform: photos cropped at crop_pct, small images resized whole
            "crop_pct": getattr(cfg, "crop_pct", None) or 1.0,
            "crop_mode": "center" if getattr(cfg, "crop_pct", None) else "squash",
            "interpolation": "bilinear",
        }
        model_args = dict(cfg.backbone_kwargs or {})
        backbone = copy.deepcopy(self.backbone).to(
            memory_format=torch.contiguous_format
        )  # safetensors wants contiguous
        save_for_hf(
            backbone,
            save_directory,
            safe_serialization=True,
            model_args=model_args or None,
            model_config={"label_names": [cfg.id2label[i] for i in range(cfg.num_labels)]},
        )
        path = os.path.join(save_directory, "config.json")
        with open(path) as f:
            data = json.load(f)
        # timm 1.0.31 records num_classes in model_args too, which TimmWrapperForImageClassification would pass twice
        (data.get("model_args") or {}).pop("num_classes", None)
        with open(path, "w") as f:
            json.dump(data, f, indent=2)


STUDENT_MAPS = ("last_block", "prepool")


def default_student_map(projector: Optional[str], head: str) -> str:
    """Which student map a projector onto the teacher's reads, where the student's classifier pools a 1x1 expansion
    of its last block (the zoo's MobileNetV2 and ShuffleNetV2: ``prepool_modules``). ``last_block`` (the expansion
    is not built) for a projector feeding the teacher's head, as SimKD's reference reads ``feat_s[-2]`` (160 channels
    for MobileNetV2, 464 for ShuffleNetV2) and MKCD follows it; ``prepool`` (the expanded map the student's own
    classifier would pool) for SRRL, whose reference reads the pooled penultimate feature, and for students with
    their own head. Families without an expansion (ResNet, WRN, VGG, ShuffleNetV1, any other timm model) read their
    pre-pool map either way (docs/methods.md)."""
    return "last_block" if head == "teacher" and projector not in (None, "srrl") else "prepool"


@torch.no_grad()
def _probe(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = model.forward_features(x.to(device))
    model.train(was_training)
    return out.cpu()
