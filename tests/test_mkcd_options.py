"""MKCD's round-two options (docs/mkcd.md): the scale-free feature loss and the mid-level knowledge term."""

import numpy as np
import pytest
import timm
import torch

from conftest import tiny_args, tiny_data, tiny_student
from hf_mkcd import DistillationTrainer
from hf_mkcd.distillers import Step, get_distiller_class


@pytest.fixture(scope="module")
def data():
    return tiny_data(n_train=48)


def _terms(mkcd, f_s, f_t):
    z = torch.zeros(f_s.shape[0], 5)
    return mkcd(
        {"logits": z, "projected": f_s},
        {"logits": z, "features_aligned": f_t},
        {"labels": torch.zeros(f_s.shape[0], dtype=torch.long)},
        Step(temperature=4.0),
    )


def test_energy_norm_by_hand_and_free_of_the_teachers_scale():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    mkcd = get_distiller_class("mkcd")(feat_weight=3.0, kd_weight=0.0, ce_weight=0.0, feat_norm="energy", mid_weight=0)
    got = _terms(mkcd, torch.tensor(f_s), torch.tensor(f_t))["loss_feat"].item()
    assert got == pytest.approx(3.0 * np.mean((f_s - f_t) ** 2) / np.mean(f_t**2), rel=1e-6)
    # a teacher 100x larger, followed by the student: the same loss (plain MSE grows 10,000x)
    scaled = _terms(mkcd, torch.tensor(100 * f_s), torch.tensor(100 * f_t))["loss_feat"].item()
    assert scaled == pytest.approx(got, rel=1e-5)
    plain = get_distiller_class("mkcd")(feat_weight=3.0, kd_weight=0.0, ce_weight=0.0, feat_norm="none", mid_weight=0)
    assert _terms(plain, torch.tensor(100 * f_s), torch.tensor(100 * f_t))["loss_feat"].item() == pytest.approx(
        1e4 * _terms(plain, torch.tensor(f_s), torch.tensor(f_t))["loss_feat"].item(), rel=1e-6
    )


def test_head_norm_by_hand_reads_only_what_the_reused_head_reads(data):
    """feat_norm 'head': the relative error through the teacher classifier's W at every position. An error along a
    direction W ignores (its null space) costs nothing, where the plain relative MSE charges it."""
    from hf_mkcd.distillers import Pair
    from hf_mkcd.features import probe_shapes

    torch.manual_seed(0)
    teacher = timm.create_model("cifar_wrn_16_2", in_chans=1, num_classes=10).eval()
    student = tiny_student(teacher, "mkcd", data)
    s, t = probe_shapes(student, teacher, {"logits", "projected"}, {"logits", "features"})
    mkcd = get_distiller_class("mkcd")(
        Pair(student, teacher, s, t), feat_weight=2.0, kd_weight=0, ce_weight=0, feat_norm="head", mid_weight=0
    )
    w = teacher.get_classifier().weight.detach().double().numpy()  # 10 x 128
    assert "head_weight" not in mkcd.state_dict()  # the teacher's head is the student's already: not saved twice
    rng = np.random.default_rng(0)
    f_t, f_s = rng.normal(size=(2, 128, 3, 3)), rng.normal(size=(2, 128, 3, 3))
    wd, wt = np.einsum("bchw,kc->bkhw", f_s - f_t, w), np.einsum("bchw,kc->bkhw", f_t, w)
    got = _terms(mkcd, torch.tensor(f_s), torch.tensor(f_t))["loss_feat"].item()
    assert got == pytest.approx(2.0 * np.mean(wd**2) / np.mean(wt**2), rel=1e-5)
    null = np.linalg.svd(w)[2][-1]  # a channel direction W maps to zero (128 channels, rank 10)
    off_head = f_t + 5.0 * null[None, :, None, None]
    assert _terms(mkcd, torch.tensor(off_head), torch.tensor(f_t))["loss_feat"].item() == pytest.approx(0, abs=1e-8)
    energy = get_distiller_class("mkcd")(feat_weight=2.0, kd_weight=0, ce_weight=0, feat_norm="energy", mid_weight=0)
    assert _terms(energy, torch.tensor(off_head), torch.tensor(f_t))["loss_feat"].item() > 0.1


def test_unknown_feat_norm_is_refused_by_name():
    with pytest.raises(ValueError, match="feat_norm 'l2'; choose one of"):
        get_distiller_class("mkcd")(feat_norm="l2", mid_weight=0)


def test_mid_term_needs_the_pair():
    with pytest.raises(ValueError, match="mid_weight builds a projector"):
        get_distiller_class("mkcd")(mid_weight=1.0)


@pytest.mark.parametrize("teacher_name", ["cifar_wrn_16_2", "cifar_vgg8"])
def test_mid_term_trains_its_projector_across_shapes(teacher_name, data, tmp_path):
    """The mid-level term on a pair whose stage maps differ in channels (and, for VGG, family): the distiller's own
    projector and the student learn, the teacher stays as it is, and its stage maps go to the teacher cache."""
    torch.manual_seed(0)
    teacher = timm.create_model(teacher_name, in_chans=1, num_classes=10).eval()
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_student(teacher, "mkcd", data)
    cache = str(tmp_path / "cache")
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, method="mkcd", max_steps=3, distiller_kwargs={"mid_weight": 1.0}, teacher_cache=cache),
        train_dataset=data.train,
    )
    assert "stages" in trainer.distiller.teacher_needs and trainer.teacher_cache is not None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss_mid" in e]
    assert len(logs) == 3 and all(np.isfinite(e["loss_mid"]) and e["loss_mid"] > 0 for e in logs)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("distiller.mid_projector.") for n in moved)
    assert any(n.startswith("student.backbone.") for n in moved)
    assert not any(n.startswith("student.classifier.") for n in moved)  # the reused teacher head stays frozen
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_t[k]), k


def test_pool_resampling_never_invents_detail_the_student_map_lacks():
    """A 1x1 student map against a 2x2 teacher map (vgg13 -> mobilenetv2 at 16x16): ``learned`` upsamples by a
    transposed conv, ``pool`` pools the teacher's map to 1x1 -- which is all the teacher's head reads, since it
    global-pools -- and the teacher's logits are unchanged by that pooling."""
    from hf_mkcd.models.projectors import build_projector

    learned = build_projector("mkcd", (1280, 1, 1), (512, 2, 2), resample="learned")
    pooled = build_projector("mkcd", (1280, 1, 1), (512, 2, 2))  # the default
    assert (learned.plan, learned.output_size) == ("up2", (2, 2))
    assert (pooled.plan, pooled.output_size) == ("pool", (1, 1))
    f_t = torch.randn(3, 512, 2, 2)
    assert torch.allclose(pooled.align_teacher(f_t), f_t.mean((2, 3), keepdim=True))
    assert pooled(torch.randn(3, 1280, 1, 1)).shape == (3, 512, 1, 1)
    same = build_projector("mkcd", (64, 4, 4), (64, 4, 4), resample="pool")  # equal sizes: nothing to resample
    assert same.plan == "same"
    with pytest.raises(ValueError, match="resample 'bilinear'; choose 'learned' or 'pool'"):
        build_projector("mkcd", (64, 4, 4), (64, 4, 4), resample="bilinear")


def test_mid_projector_is_built_like_the_students(data):
    from hf_mkcd.distillers import Pair
    from hf_mkcd.features import probe_shapes

    torch.manual_seed(0)
    teacher = timm.create_model("cifar_wrn_16_2", in_chans=1, num_classes=10).eval()
    student = tiny_student(teacher, "mkcd", data)
    student.config.projector_kwargs = {"factor": 2, "resample": "pool"}
    s, t = probe_shapes(student, teacher, {"logits", "projected"}, {"logits", "features"})
    mkcd = get_distiller_class("mkcd")(Pair(student, teacher, s, t), mid_weight=1.0)
    assert mkcd.mid_projector.learned_resampling is False
    # the teacher map of the stage before the last: wrn_16_2 widths 32, 64, 128 -> 64 channels, m = 64 / f = 32
    assert mkcd.mid_projector.teacher_shape[0] == 64 and mkcd.mid_projector.encoder[0][0].out_channels == 32


def test_students_saved_before_resample_existed_keep_their_architecture(tmp_path):
    """A student saved before ``resample`` existed was built with learned 2x resampling; its config has no such key
    and must still load into that architecture, bit for bit. New students record the option."""
    from hf_mkcd import MKCDStudentForImageClassification

    torch.manual_seed(0)
    teacher = timm.create_model("cifar_resnet32x4", in_chans=1, num_classes=10).eval()
    new = MKCDStudentForImageClassification.from_teacher(teacher, "cifar_shufflev2", image_size=16)
    assert new.config.projector_kwargs["resample"] == "pool" and new.projector.plan == "pool"
    old = MKCDStudentForImageClassification.from_teacher(
        teacher, "cifar_shufflev2", image_size=16, projector_kwargs={"resample": "learned"}
    )
    assert old.projector.plan == "up2"
    del old.config.projector_kwargs["resample"]  # the config as written before the option existed
    old.save_pretrained(tmp_path)
    loaded = MKCDStudentForImageClassification.from_pretrained(tmp_path)
    assert loaded.projector.plan == "up2"
    for k, v in old.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


# the teacher maps each projector of MKCD aims at, by family: signed (no final ReLU can reproduce them) or not.
# WRN's blocks end before their BN + ReLU and MobileNetV2's in a linear bottleneck; every pre-pool map is post-ReLU.
SIGNED_MID_TARGET = {
    "cifar_resnet20": False,
    "cifar_resnet8x4": False,
    "cifar_resnet50": False,
    "cifar_wrn_16_2": True,
    "cifar_vgg8": False,
    "cifar_mobilenetv2": True,
    "cifar_shufflev1": False,
    "cifar_shufflev2": False,
    "transformers_resnet": False,
}


@pytest.mark.parametrize("family", sorted(SIGNED_MID_TARGET))
def test_each_projector_ends_in_what_its_target_can_take(data, family):
    """A projector onto a signed map gets no final ReLU (round two's mid-level projector took the main one's ReLU
    onto WRN's and MobileNetV2's signed stage maps: about half of their energy out of its reach); onto a post-ReLU
    map it keeps it. Checked on the built MKCD, for every teacher family of the zoo and the transformers adapter."""
    import torch.nn as nn

    from hf_mkcd.distillers import Pair
    from hf_mkcd.features import probe_shapes, teacher_outputs
    from hf_mkcd.teacher import as_timm_teacher

    torch.manual_seed(0)
    if family == "transformers_resnet":
        from test_transformers_teacher import tiny_transformers

        teacher = as_timm_teacher(tiny_transformers("resnet")).eval()
    else:
        teacher = timm.create_model(family, in_chans=1, num_classes=10).eval()
    student = tiny_student(teacher, "mkcd", data)
    mkcd_cls = get_distiller_class("mkcd")
    s, t = probe_shapes(student, teacher, mkcd_cls.student_needs, mkcd_cls.teacher_needs)
    mkcd = mkcd_cls(Pair(student, teacher, s, t), mid_weight=1.0)
    with torch.no_grad():
        maps = teacher_outputs(teacher, torch.randn(4, 1, 16, 16), {"stages"})
    assert bool((maps["stages"][-2] < 0).any()) == SIGNED_MID_TARGET[family]  # the table above is what the map is
    assert isinstance(mkcd.mid_projector.out_act, nn.Identity) == SIGNED_MID_TARGET[family]
    assert isinstance(student.projector.out_act, nn.ReLU)  # the pre-pool map: post-ReLU in every family here
