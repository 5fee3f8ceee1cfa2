"""Teacher loading: every source a user can type, and the errors for bad checkpoints."""

import tarfile

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

from hf_mkcd import (
    CheckpointError,
    HubUnavailableError,
    MKCDStudentForImageClassification,
    load_state_dict_file,
    load_teacher,
)

X = torch.randn(2, 3, 32, 32)


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = timm.create_model("cifar_resnet20").eval()
    # non-trivial BN statistics, so a loader that drops buffers would be caught
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_community_pth_layout_without_bn_counters(resnet20, tmp_path):
    sd = {k: v for k, v in resnet20.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 240, "model": sd, "accuracy": 69.1}, tmp_path / "ckpt_epoch_240.pth")
    teacher = load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "ckpt_epoch_240.pth"), num_classes=100)
    assert torch.equal(logits(teacher), logits(resnet20))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_state_dict_key_module_prefix_and_safetensors(resnet20, tmp_path):
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet20.state_dict().items()}}, tmp_path / "ddp.pth")
    assert torch.equal(logits(load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "ddp.pth"))), logits(resnet20))
    save_file({k: v.contiguous() for k, v in resnet20.state_dict().items()}, tmp_path / "w.safetensors")
    assert torch.equal(
        logits(load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "w.safetensors"))), logits(resnet20)
    )


def test_rgb_checkpoint_into_grayscale_model(resnet20, tmp_path):
    torch.save({"model": resnet20.state_dict()}, tmp_path / "rgb.pth")
    gray = load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "rgb.pth"), in_chans=1)
    torch.testing.assert_close(gray.conv1.weight, resnet20.conv1.weight.sum(1, keepdim=True))


def test_directories_saved_by_hf_mkcd_timm_and_transformers(resnet20, tmp_path):
    plain = MKCDStudentForImageClassification.from_teacher(resnet20, "cifar_resnet20", projector=None, head="student")
    plain.backbone.load_state_dict(resnet20.state_dict())
    plain.save_pretrained(tmp_path / "ours")
    assert torch.equal(logits(load_teacher(str(tmp_path / "ours"))), logits(resnet20))
    plain.export_timm(tmp_path / "timm_native")
    assert torch.equal(logits(load_teacher(str(tmp_path / "timm_native"))), logits(resnet20))
    wrapper = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="cifar_resnet20", num_labels=100))
    wrapper.timm_model.load_state_dict(resnet20.state_dict())
    wrapper.save_pretrained(tmp_path / "wrapper")
    assert torch.equal(logits(load_teacher(str(tmp_path / "wrapper"))), logits(resnet20))


def test_distilled_student_is_refused_as_teacher(resnet20, tmp_path):
    MKCDStudentForImageClassification.from_teacher(resnet20, "cifar_resnet20").save_pretrained(tmp_path / "s")
    with pytest.raises(ValueError, match="distilled student"):
        load_teacher(str(tmp_path / "s"))


def test_wrong_architecture_names_the_keys_and_the_matching_zoo_model(resnet20, tmp_path):
    torch.save({"model": resnet20.state_dict()}, tmp_path / "r20.pth")
    with pytest.raises(CheckpointError) as err:
        load_teacher("cifar_resnet8x4", checkpoint=str(tmp_path / "r20.pth"))
    msg = str(err.value)
    assert "does not fit" in msg and "shape mismatch" in msg and "conv1.weight" in msg
    assert "match the CIFAR-zoo architecture(s): cifar_resnet20" in msg


def test_class_count_mismatch_refused(resnet20, tmp_path):
    torch.save({"model": resnet20.state_dict()}, tmp_path / "r20.pth")
    with pytest.raises(
        ValueError, match="class-count mismatch: the teacher 'cifar_resnet20' predicts 100 classes, the dataset has 10"
    ):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "r20.pth"), num_classes=10)
    with pytest.raises(CheckpointError, match="class-count mismatch.*100-class.*10 classes"):  # a model built smaller
        load_state_dict_file(timm.create_model("cifar_resnet20", num_classes=10), str(tmp_path / "r20.pth"))
    ten = timm.create_model("cifar_resnet20", num_classes=10)
    torch.save({"model": ten.state_dict()}, tmp_path / "r20_10.pth")
    loaded = load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "r20_10.pth"))  # classes read from the checkpoint
    assert loaded.num_classes == 10 and torch.equal(loaded.fc.weight, ten.fc.weight)
    with pytest.raises(ValueError, match="class-count mismatch.*predicts 100 classes.*has 10"):
        plain = MKCDStudentForImageClassification.from_teacher(
            resnet20, "cifar_resnet20", projector=None, head="student"
        )
        plain.save_pretrained(tmp_path / "d")
        load_teacher(str(tmp_path / "d"), num_classes=10)


def test_corrupt_foreign_and_archived_checkpoints(tmp_path):
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "trunc.pth"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "bad.safetensors"))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "pickled_module.pth"))
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "no_weights.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "no_weights.pth"))
    (tmp_path / "inner.pth").write_bytes(b"x")
    with tarfile.open(tmp_path / "cifar_teachers.tar", "w") as tar:
        tar.add(tmp_path / "inner.pth", arcname="cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
    with pytest.raises(CheckpointError, match="tar archive.*extract it"):
        load_teacher("cifar_resnet56", checkpoint=str(tmp_path / "cifar_teachers.tar"))
    with pytest.raises(FileNotFoundError):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "missing.pth"))


def test_names_hub_ids_and_files(tmp_path):
    with pytest.raises(ValueError, match="Unknown timm architecture 'cifar_wrn_40_3'.*cifar_wrn_40_2"):
        load_teacher("cifar_wrn_40_3")
    with pytest.raises(ValueError, match="has no weights"):
        load_teacher("cifar_resnet20")
    assert load_teacher("cifar_resnet20", allow_random_init=True).num_classes == 100
    with pytest.raises(HubUnavailableError, match="Hub cannot be reached.*--teacher_checkpoint"):
        load_teacher("some-user/resnet32x4-cifar100")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        load_teacher(str(tmp_path / "w.pth"))


def test_a_kd_codebase_checkpoint_loads_from_the_part_that_fits(tmp_path, caplog):
    """``{"model": {"module.student.conv1.weight": ...}}`` beside the teacher and a connector, as distillation
    codebases save their whole module: the student's part is found, said, and loads bit for bit."""
    import logging

    import timm

    torch.manual_seed(0)
    student, other = timm.create_model("cifar_resnet20", num_classes=10), timm.create_model("cifar_resnet8x4")
    wrapped = {f"module.student.{k}": v for k, v in student.state_dict().items()}
    wrapped.update({f"module.teacher.{k}": v for k, v in other.state_dict().items()})
    wrapped["module.connector.weight"] = torch.zeros(3, 3)
    torch.save({"epoch": 3, "model": wrapped, "optimizer": {"lr": 0.1}}, tmp_path / "kd.pth")
    caplog.set_level(logging.WARNING, logger="hf_mkcd")
    loaded = load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "kd.pth"))
    assert "took ['model'], keys under 'module.student.'" in caplog.text
    for k, v in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_a_checkpoint_with_no_fitting_part_names_the_candidates(tmp_path):
    import timm

    wrapped = {f"module.student.{k}": v for k, v in timm.create_model("cifar_resnet8x4").state_dict().items()}
    torch.save({"model": wrapped}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"(?s)no part of it fits.*\['model'\], keys under 'module.student.': "):
        load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "other.pth"))


def _weights_file(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_a_pretrained_student_gets_every_weight_but_a_fresh_head(tmp_path):
    """``--student_pretrained FILE``: as ``timm.create_model(pretrained=True, num_classes=N)``, every weight loaded
    but the classifier, which keeps its fresh initialisation when the weights' head has another class count (or the
    student reuses the teacher's head); the first conv summed over RGB for a grayscale student."""
    from hf_mkcd.loading import load_student_pretrained

    torch.manual_seed(0)
    donor = timm.create_model("cifar_resnet20", num_classes=100)
    path = _weights_file(donor, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    student = timm.create_model("cifar_resnet20", num_classes=10)
    fresh_head = student.fc.weight.clone()
    said = load_student_pretrained(student, path, "cifar_resnet20")
    assert "classifier re-initialised" in said
    for key, value in donor.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(student.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(student.fc.weight, fresh_head, rtol=0, atol=0)
    same = timm.create_model("cifar_resnet20", num_classes=100)  # the same class count: the head is kept too
    assert "classifier kept" in load_student_pretrained(same, path, "cifar_resnet20")
    torch.testing.assert_close(same.fc.weight, donor.fc.weight, rtol=0, atol=0)
    gray = timm.create_model("cifar_resnet20", num_classes=0, in_chans=1)  # a reused head, grayscale images
    load_student_pretrained(gray, path, "cifar_resnet20")
    torch.testing.assert_close(gray.conv1.weight, donor.conv1.weight.sum(1, keepdim=True))


def test_pretrained_weights_that_do_not_fit_or_cannot_be_had_are_refused_clearly(tmp_path):
    from hf_mkcd.hub import HubUnavailableError
    from hf_mkcd.loading import CheckpointError, load_student_pretrained, pretrained_source_kind

    path = _weights_file(timm.create_model("cifar_resnet20"), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit the student cifar_resnet32:\n  missing from the weights"):
        load_student_pretrained(timm.create_model("cifar_resnet32"), path, "cifar_resnet32")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained_source_kind("weights/missing.safetensors", "resnet18")
    with pytest.raises(ValueError, match="holds weights of 'resnet50', the student is 'resnet18'"):
        pretrained_source_kind("resnet50.a1_in1k", "resnet18")
    with pytest.raises(ValueError, match="timm has no pretrained weights for 'cifar_resnet20'"):
        load_student_pretrained(timm.create_model("cifar_resnet20"), "true", "cifar_resnet20")
    with pytest.raises(HubUnavailableError, match=r"hf download timm/resnet18\.a1_in1k"):  # offline, not cached
        load_student_pretrained(timm.create_model("resnet18"), "true", "resnet18")
    assert pretrained_source_kind("timm/resnet18.a1_in1k", "resnet18") == ("hub", "hf-hub:timm/resnet18.a1_in1k")


def test_a_grayscale_checkpoint_given_with_its_architecture_builds_a_grayscale_teacher(tmp_path):
    """The bug hunt's case: a 1-channel teacher given as architecture + --teacher_checkpoint ended in "shape
    mismatch ... its keys match cifar_resnet20". The checkpoint's first conv says how many channels it takes, as
    its classifier says how many classes."""
    from hf_mkcd.models.helpers import first_conv_in_channels

    torch.manual_seed(0)
    gray = timm.create_model("cifar_resnet20", in_chans=1, num_classes=10).eval()
    torch.save({"model": gray.state_dict()}, tmp_path / "gray.pth")
    teacher = load_teacher("cifar_resnet20", checkpoint=str(tmp_path / "gray.pth"))
    assert first_conv_in_channels(teacher) == 1 and teacher.get_classifier().out_features == 10
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(teacher(x), gray(x))
