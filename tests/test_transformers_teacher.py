"""transformers teachers (ViT, ResNet, ConvNeXt) saved with ``save_pretrained``: every method trains from them or
is refused before training with its reason; the CLI and the Python API take them as they are."""

import os
import sys

import pytest
import torch
from conftest import tiny_args, tiny_data

from hf_mkcd import MKCDStudentForImageClassification, list_distillers, load_teacher
from hf_mkcd.distillers import get_distiller_class
from hf_mkcd.teacher import TransformersTeacher
from hf_mkcd.trainer import DistillationTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import distill  # noqa: E402

LABELS = {i: str(i) for i in range(10)}  # digits' class names, so the pre-flight compares them


def tiny_transformers(kind: str):
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    common = dict(num_labels=10, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, num_channels=1)
    if kind == "vit":
        return ViTForImageClassification(
            ViTConfig(
                image_size=16,
                patch_size=4,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                **common,
            )
        )
    if kind == "resnet":
        return ResNetForImageClassification(
            ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], **common)
        )
    return ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=16, **common)
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers_teachers")
    for kind in ("vit", "resnet", "convnext"):
        tiny_transformers(kind).save_pretrained(root / kind)
    return root


# what a teacher's head and maps allow, and the reason each refused method is given (checked on the message)
REFUSED = {
    "vit": {
        "tokens, not spatial stage maps": {"fitnet", "at", "sp"},
        "not a (B, C, H, W) map": {"mkcd", "simkd", "srrl"},
        "pre-activation": {"ab", "ofd", "reviewkd"},
    },
    "resnet": {"pre-activation": {"ab", "ofd", "reviewkd"}},
    "convnext": {"cannot be reused": {"mkcd", "simkd", "srrl"}, "pre-activation": {"ab", "ofd", "reviewkd"}},
}


def test_the_adapter_reads_each_head_as_it_is():
    """Probed, not assumed: ResNet pools a map by its mean, ConvNeXt normalises after the mean (no head reuse),
    ViT reads its class token; forward_head(forward_features(x)) is the model's own logits."""
    x = torch.randn(3, 1, 16, 16)
    for kind, pooling, shape in (
        ("resnet", "mean", (32, 2, 2)),
        ("convnext", "mean_norm", (32, 2, 2)),
        ("vit", "cls", (17, 32)),
    ):
        model = tiny_transformers(kind).eval()
        teacher = TransformersTeacher(model)
        assert teacher.pooling == pooling and teacher.pretrained_cfg["label_names"] == list(LABELS.values())
        with torch.no_grad():
            features = teacher.forward_features(x)
            assert tuple(features.shape[1:]) == shape
            torch.testing.assert_close(teacher.forward_head(features), model(pixel_values=x).logits)


@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext"])
@pytest.mark.parametrize("method", [m for m in list_distillers() if m != "none"])
def test_every_method_trains_from_a_transformers_teacher_or_is_refused_with_its_reason(saved, tmp_path, kind, method):
    cls = get_distiller_class(method)
    teacher = load_teacher(str(saved / kind))
    data = tiny_data(n_train=32, views=cls.views)
    reason = next((why for why, methods in REFUSED[kind].items() if method in methods), None)
    try:
        student = MKCDStudentForImageClassification.from_teacher(
            teacher, "cifar_resnet20", projector=cls.projector, head=cls.head, id2label=data.id2label, image_size=16
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=tiny_args(tmp_path, method=method, max_steps=1),
            train_dataset=data.train,
        )
    except ValueError as err:
        assert reason is not None and reason in str(err), f"{method} on {kind} refused: {err}"
        return
    assert reason is None, f"{method} on {kind} should be refused ({reason})"
    trainer.train()
    assert trainer.state.global_step == 1 and torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))


@pytest.mark.parametrize("kind,method", [("vit", "kd"), ("resnet", "kd"), ("resnet", "mkcd")])
def test_cli_distils_from_a_saved_transformers_teacher(saved, tmp_path, kind, method):
    """The bug report's case: `config.json has neither model_type 'mkcd_student' nor a timm 'architecture'`."""
    out = tmp_path / "student"
    results = distill.main(
        [
            "--teacher_model_name_or_path",
            str(saved / kind),
            "--method",
            method,
            "--model_name_or_path",
            "cifar_resnet20",
            "--dataset_name",
            "digits",
            "--image_size",
            "16",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--use_cpu",
            "true",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--dataloader_num_workers",
            "0",
            "--disable_tqdm",
            "true",
            "--max_eval_samples",
            "32",
            "--skip_teacher_check",
            "true",
        ]
    )  # random weights: at chance by design
    assert "eval_top1" in results and (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    card = (out / "README.md").read_text()
    assert {"vit": "ViTForImageClassification", "resnet": "ResNetForImageClassification"}[kind] in card


def test_cli_refuses_mkcd_from_a_vit_before_training(saved, tmp_path):
    with pytest.raises(ValueError, match=r"gives features of shape \(2, 17, 32\), not a \(B, C, H, W\) map.*kd"):
        distill.main(
            [
                "--teacher_model_name_or_path",
                str(saved / "vit"),
                "--method",
                "mkcd",
                "--model_name_or_path",
                "cifar_resnet20",
                "--dataset_name",
                "digits",
                "--image_size",
                "16",
                "--output_dir",
                str(tmp_path / "x"),
                "--use_cpu",
                "true",
                "--report_to",
                "none",
                "--skip_teacher_check",
                "true",
            ]
        )
    assert not (tmp_path / "x" / "model.safetensors").exists()
