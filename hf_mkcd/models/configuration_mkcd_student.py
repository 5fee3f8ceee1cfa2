"""Config of the deployable student: a timm backbone, an optional projector and a head.

Shipped inside every saved student (remote code): transformers only.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

HEADS = ("student", "teacher")


class MKCDStudentConfig(PreTrainedConfig):
    r"""
    Args:
        backbone (`str`): timm architecture of the student (e.g. ``cifar_resnet8x4``, ``resnet18``).
        backbone_kwargs (`dict`, *optional*): extra ``timm.create_model`` kwargs (e.g. ``{"in_chans": 1}``).
        projector (`str`, *optional*): ``mkcd``, ``simkd`` or ``fitnet``; ``None`` for a plain student.
        projector_kwargs (`dict`, *optional*): kwargs of the projector (``factor``, ``latent_ratio``, ...).
        student_feature_shape (`list[int]`, *optional*): (C, H, W) of the backbone's pre-pool map.
        teacher_feature_shape (`list[int]`, *optional*): (C, H, W) of the teacher's pre-pool map.
        head (`str`): ``"teacher"``: logits = the teacher's frozen classifier on the pooled projected
            map (MKCD/SimKD/SRRL); ``"student"``: the backbone's own classifier.
        head_pool (`str`): global pooling of the teacher head (timm pool type, ``avg`` for the CIFAR zoo).
        teacher (`str`, *optional*): where the teacher came from (name or path), for the model card.
        image_size (`int`), num_channels (`int`), image_mean / image_std (`list[float]`): the input the
            student was trained on; used for the saved image processor.
        crop_pct (`float`, *optional*): photos: the evaluation resizes the shorter side to
            ``image_size / crop_pct`` and crops the centre (timm's); None: the image is resized whole.
    """

    model_type = "mkcd_student"
    keys_to_ignore_at_inference = ["features", "projected_features"]

    backbone: str = "cifar_resnet8x4"
    backbone_kwargs: dict[str, Any] | None = None
    projector: str | None = None
    projector_kwargs: dict[str, Any] | None = None
    student_feature_shape: list[int] | None = None
    teacher_feature_shape: list[int] | None = None
    head: str = "student"
    head_pool: str = "avg"
    teacher: str | None = None
    image_size: int = 32
    num_channels: int = 3
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    crop_pct: float | None = None

    def __post_init__(self, **kwargs):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.projector is not None and (self.student_feature_shape is None or self.teacher_feature_shape is None):
            raise ValueError("a projector needs student_feature_shape and teacher_feature_shape (use from_teacher)")
        if self.head == "teacher" and self.teacher_feature_shape is None:
            raise ValueError("head='teacher' needs teacher_feature_shape (use from_teacher)")
        super().__post_init__(**kwargs)
        if self.id2label and not self.label2id:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
