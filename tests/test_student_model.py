"""The deployable student: built from a teacher, frozen reused head, Hub round trips."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageClassification, pipeline

from hf_mkcd import MKCDStudentConfig, MKCDStudentForImageClassification

LABELS = {i: f"class_{i}" for i in range(100)}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return timm.create_model("cifar_wrn_16_2").eval()


@pytest.fixture(scope="module")
def student(teacher):
    torch.manual_seed(1)
    return MKCDStudentForImageClassification.from_teacher(
        teacher, "cifar_resnet8x4", id2label=LABELS, teacher_name="cifar_wrn_16_2"
    )


def test_from_teacher_config_and_forward(student, teacher):
    cfg = student.config
    assert cfg.student_feature_shape == [256, 8, 8] and cfg.teacher_feature_shape == [128, 8, 8]
    assert cfg.head == "teacher" and cfg.projector == "mkcd" and cfg.num_labels == 100
    assert cfg.projector_kwargs["out_act"] == "relu"  # the WRN pre-pool map is post-ReLU
    out = student(pixel_values=torch.randn(2, 3, 32, 32), output_features=True)
    assert out.logits.shape == (2, 100)
    assert out.features.shape == (2, 256, 8, 8) and out.projected_features.shape == (2, 128, 8, 8)
    # logits = teacher fc(avgpool(projected))
    torch.testing.assert_close(out.logits, teacher.fc(out.projected_features.mean((2, 3))))
    torch.testing.assert_close(student.classifier.weight, teacher.fc.weight)


def test_backbone_keeps_timm_init(student):
    torch.manual_seed(1)
    reference = timm.create_model("cifar_resnet8x4", num_classes=0)
    # transformers' default init would give N(0, 0.02); kaiming fan_out for a 3x3x32 conv is ~0.083
    assert abs(student.backbone.conv1.weight.std().item() - reference.conv1.weight.std().item()) < 0.01
    assert student.backbone.conv1.weight.std().item() > 0.06


def test_frozen_head_gets_no_update_and_gradients_reach_exactly_backbone_and_projector(teacher):
    model = MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet8x4")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("classifier") for n in names)  # the head has no parameters at all
    head_before = model.classifier.weight.clone()
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.grad.abs().sum() > 0} == {"backbone", "projector"}
    opt.step()
    assert torch.equal(model.classifier.weight, head_before)
    # the residual branch's last BN starts at zero, so the first step moves only that BN in the projector;
    # from the second step on the encoder learns too
    assert not torch.equal(model.projector.decoder[-1][1].weight, params_before["projector.decoder.1.1.weight"])
    opt.zero_grad()
    model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    opt.step()
    assert not torch.equal(model.projector.encoder[0][0].weight, params_before["projector.encoder.0.0.weight"])


def test_save_load_identical_logits_auto_classes_and_processor(student, tmp_path):
    student.eval()
    student.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_mkcd_student.py"} <= files
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["id2label"]["7"] == "class_7" and cfg["label2id"]["class_7"] == 7
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MKCDStudentConfig)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is MKCDStudentForImageClassification
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x).logits, loaded(x).logits)
    for k, v in student.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    pipe = pipeline("image-classification", model=str(tmp_path))
    preds = pipe(Image.fromarray(np.uint8(np.random.rand(32, 32, 3) * 255)), top_k=3)
    assert len(preds) == 3 and preds[0]["label"].startswith("class_")


def test_remote_code_loads_where_hf_mkcd_is_not_importable(student, tmp_path):
    student.eval()
    student.save_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save({"x": x, "logits": student(x).logits}, tmp_path / "ref.pt")
    code = (
        "import sys; sys.modules['hf_mkcd'] = None\n"  # any `import hf_mkcd` now fails
        "import torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"d = {str(tmp_path)!r}\n"
        "m = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True).eval()\n"
        "r = torch.load(d + '/ref.pt')\n"
        "assert 'transformers_modules' in type(m).__module__, type(m).__module__\n"
        "assert torch.equal(m(r['x']).logits, r['logits'])\n"
        "print('REMOTE_OK')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert "REMOTE_OK" in res.stdout, res.stderr[-3000:]


def test_plain_student_and_timm_export(tmp_path):
    teacher = timm.create_model("cifar_resnet20", num_classes=10).eval()
    model = MKCDStudentForImageClassification.from_teacher(
        teacher, "cifar_resnet8x4", projector=None, head="student"
    ).eval()
    assert model.classifier is None and model.projector is None and model.config.num_labels == 10
    model.export_timm(tmp_path / "timm")
    wrapped = AutoModelForImageClassification.from_pretrained(tmp_path / "timm").eval()
    assert type(wrapped).__name__ == "TimmWrapperForImageClassification"
    via_timm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(wrapped(x).logits, model(x).logits)
        assert torch.equal(via_timm(x), model(x).logits)
    distilled = MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet8x4")
    with pytest.raises(ValueError, match="plain student"):
        distilled.export_timm(tmp_path / "nope")


def test_grayscale_student_accepts_rgb_and_gray():
    teacher = timm.create_model("cifar_resnet20", in_chans=1, num_classes=10).eval()
    model = MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet8x4").eval()
    assert model.config.num_channels == 1 and len(model.config.image_mean) == 1
    gray = torch.randn(2, 1, 28, 28)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model(gray).logits, model(rgb).logits, rtol=1e-4, atol=1e-5)


def test_class_count_and_head_errors():
    teacher = timm.create_model("cifar_resnet20", num_classes=10).eval()
    with pytest.raises(
        ValueError, match="class-count mismatch: the teacher predicts 10 classes, the student's num_labels has 100"
    ):
        MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet8x4", num_labels=100)
    with pytest.raises(ValueError, match="class-count mismatch"):
        MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet8x4", id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="Unknown timm architecture 'cifar_resnet9x4'.*cifar_resnet8x4"):
        MKCDStudentForImageClassification.from_teacher(teacher, "cifar_resnet9x4")
    headless = timm.create_model("cifar_resnet20", num_classes=0)
    with pytest.raises(ValueError, match="not a linear layer"):
        MKCDStudentForImageClassification.from_teacher(headless, "cifar_resnet8x4")


def test_non_cifar_timm_models():
    teacher = timm.create_model("resnet18", num_classes=10, pretrained_cfg_overlay=dict(input_size=(3, 64, 64))).eval()
    model = MKCDStudentForImageClassification.from_teacher(teacher, "mobilenetv3_small_100", image_size=64)
    assert model.config.teacher_feature_shape == [512, 2, 2]
    assert model(torch.randn(2, 3, 64, 64)).logits.shape == (2, 10)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8).eval()
    with pytest.raises(ValueError, match="not a \\(B, C, H, W\\) map"):
        MKCDStudentForImageClassification.from_teacher(vit, "cifar_resnet8x4", image_size=32)
    # a ViT teacher still works with a plain student of its own head
    plain = MKCDStudentForImageClassification.from_teacher(
        vit, "cifar_resnet8x4", projector=None, head="student", image_size=32
    )
    assert plain(torch.randn(1, 3, 32, 32)).logits.shape == (1, 10)


def test_timm_backbone_with_non_persistent_buffers_round_trips(tmp_path):
    """from_pretrained builds on the meta device: timm's non-persistent buffers (relative position
    indices) must be rebuilt by _init_weights, or the loaded model indexes garbage."""
    config = MKCDStudentConfig(backbone="test_maxvit", id2label={i: str(i) for i in range(5)}, image_size=160)
    model = MKCDStudentForImageClassification(config).eval()
    buffers = {n: b for n, b in model.named_buffers() if n not in model.state_dict()}
    assert buffers  # the point of this test
    model.save_pretrained(tmp_path)
    loaded = MKCDStudentForImageClassification.from_pretrained(tmp_path).eval()
    for name, buf in buffers.items():
        assert torch.equal(dict(loaded.named_buffers())[name], buf), name
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():  # attention kernels may sum in another order between two instances (~1e-8)
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-6, atol=1e-6)
