"""The distiller zoo: each loss against an independent numpy computation; every method trains 3 steps."""

import math

import numpy as np
import pytest
import torch
from conftest import tiny_args, tiny_data, tiny_student, tiny_teacher
from transformers import TrainerCallback

from hf_mkcd.distillers import Step, get_distiller_class, list_distillers
from hf_mkcd.distillers.at import at_loss
from hf_mkcd.distillers.dist import dist_loss
from hf_mkcd.distillers.dkd import dkd_loss
from hf_mkcd.distillers.rkd import rkd_angle_loss, rkd_distance_loss
from hf_mkcd.distillers.sp import sp_loss
from hf_mkcd.trainer import DistillationTrainer

RNG = np.random.default_rng(0)


def softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl(p, q):
    return float(np.sum(p * np.log(p / q)))


def test_dkd_by_hand():
    s, t = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4))
    y = np.array([0, 2, 3])
    T, alpha, beta = 2.0, 1.0, 8.0
    ps, pt = softmax(s, T), softmax(t, T)
    tckd = nckd = 0.0
    for i in range(3):
        bs = np.array([ps[i, y[i]], 1 - ps[i, y[i]]])
        bt = np.array([pt[i, y[i]], 1 - pt[i, y[i]]])
        tckd += kl(bt, bs)
        keep = np.arange(4) != y[i]
        qs, qt = softmax(s[i : i + 1, keep], T)[0], softmax(t[i : i + 1, keep], T)[0]
        nckd += kl(qt, qs)
    expected = T**2 * (alpha * tckd + beta * nckd) / 3
    got = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, beta, T)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("method", ["dkd", "reviewkd"])
def test_warmup_counts_whole_epochs_from_one_like_mdistiller(method):
    """mdistiller: ``min(epoch / 20, 1)`` with ``for epoch in range(1, ...)``: 0.05 in the first epoch."""
    from hf_mkcd.distillers.losses import warmup_factor

    assert [warmup_factor(e, 20.0) for e in (1, 2, 10, 20, 21)] == pytest.approx([0.05, 0.1, 0.5, 1.0, 1.0])
    if method == "dkd":
        dkd = get_distiller_class("dkd")()
        s, t, y = torch.randn(4, 5), torch.randn(4, 5), {"labels": torch.tensor([0, 1, 2, 3])}
        full = dkd({"logits": s}, {"logits": t}, y, Step(epoch=25, temperature=4.0))["loss_kd"]
        first = dkd({"logits": s}, {"logits": t}, y, Step(epoch=1, temperature=4.0))["loss_kd"]
        assert first.item() == pytest.approx(0.05 * full.item(), rel=1e-6)


def test_trainer_step_epoch_is_whole_and_one_based():
    from types import SimpleNamespace

    def at(epoch, step=1):
        return Step.from_trainer_state(SimpleNamespace(epoch=epoch, global_step=step, max_steps=100))

    assert [at(e).epoch for e in (0.0, 0.25, 0.999, 1.0, 1.5, 19.999, 20.0)] == [1, 1, 1, 2, 2, 20, 21]
    assert Step.previous_epoch(SimpleNamespace(epoch=0.0, global_step=0)) is None
    assert [Step.previous_epoch(SimpleNamespace(epoch=e, global_step=5)) for e in (0.25, 1.0, 1.25, 30.0)] == [
        1,
        1,
        2,
        30,
    ]


def test_dist_by_hand():
    s, t = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    T = 4.0
    ys, yt = softmax(s, T), softmax(t, T)
    inter = np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(5)])
    intra = np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(4)])
    expected = T**2 * (1 - inter) + T**2 * (1 - intra)
    assert dist_loss(torch.tensor(s), torch.tensor(t), 1.0, 1.0, T).item() == pytest.approx(expected, rel=1e-5)


def test_at_by_hand():
    fs = [RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 2, 2))]
    ft = [RNG.normal(size=(2, 6, 4, 4)), RNG.normal(size=(2, 7, 4, 4))]  # second pair: teacher map is larger

    def q(f):
        a = (f**2).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    pooled = ft[1].reshape(2, 7, 2, 2, 2, 2).mean((3, 5))  # 4x4 -> 2x2 average pooling
    expected = np.mean((q(fs[0]) - q(ft[0])) ** 2) + np.mean((q(fs[1]) - q(pooled)) ** 2)
    got = at_loss([torch.tensor(f) for f in fs], [torch.tensor(f) for f in ft])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sp_by_hand():
    fs, ft = RNG.normal(size=(3, 2, 2, 2)), RNG.normal(size=(3, 4, 1, 1))

    def g(f):
        f = f.reshape(3, -1)
        m = f @ f.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    expected = np.sum((g(ft) - g(fs)) ** 2) / 9
    assert sp_loss(torch.tensor(fs), torch.tensor(ft)).item() == pytest.approx(expected, rel=1e-5)


def smooth_l1(a, b):
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))


def test_rkd_by_hand():
    es, et = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 5))

    def dist(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(4)] for i in range(4)])
        return d / d[d > 0].mean()

    def angles(e):
        out = np.zeros((4, 4, 4))
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[i, j, k] = (u / nu) @ (v / nv) if nu > 0 and nv > 0 else 0.0
        return out.ravel()

    assert rkd_distance_loss(torch.tensor(es), torch.tensor(et)).item() == pytest.approx(
        smooth_l1(dist(es), dist(et)), rel=1e-5
    )
    assert rkd_angle_loss(torch.tensor(es), torch.tensor(et)).item() == pytest.approx(
        smooth_l1(angles(es), angles(et)), rel=1e-5
    )


@pytest.fixture(scope="module")
def data():
    return tiny_data(n_train=48)


@pytest.fixture(scope="module")
def data_two_views():
    return tiny_data(n_train=48, views=("strong",))


@pytest.mark.parametrize("method", list_distillers())
def test_every_method_trains_three_steps(method, data, data_two_views, tmp_path):
    data = data_two_views if method == "mlkd" else data
    teacher = tiny_teacher()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_student(teacher, method, data)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, method=method, max_steps=3),
        train_dataset=data.train,
    )
    own = {n for n, p in trainer.distiller.named_parameters()}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3
    for entry in logs:
        terms = {k: v for k, v in entry.items() if k.startswith("loss_")}
        assert terms and all(math.isfinite(v) for v in terms.values())
        assert entry["loss"] == pytest.approx(sum(terms.values()), rel=1e-3, abs=1e-5)
    changed = {n.split(".")[0] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == ({"student", "distiller"} if own else {"student"})
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_ctkd_lambda_ramp_and_reversed_gradient():
    from hf_mkcd.distillers.temperature import CTKDTemperature, ctkd_lambda

    assert ctkd_lambda(1) == pytest.approx((math.cos(math.pi / 10) + 1) / 2 - 1)  # epochs count from 1
    assert ctkd_lambda(5) == pytest.approx(-0.5) and ctkd_lambda(10) == -1.0 and ctkd_lambda(31) == -1.0
    temp = CTKDTemperature()
    assert temp(Step(epoch=1)).item() == pytest.approx(1 + 20 / (1 + math.exp(-1)))  # tau ~ 15.6 at start
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    from hf_mkcd.distillers import kd_loss

    kd_loss(s, t, temp(Step(epoch=21))).backward()  # lambda = -1: theta ascends the KD loss
    reversed_grad = temp.theta.grad.clone()
    theta = torch.tensor(1.0, requires_grad=True)
    kd_loss(s, t, 1 + 20 * torch.sigmoid(theta)).backward()
    assert reversed_grad.item() == pytest.approx(-theta.grad.item(), rel=1e-5)


def test_ctkd_decay_epochs_scale_with_a_shorter_run():
    """A 12-epoch run scales CTKD's 10-of-240 ramp as every other epoch count: with decay_epochs 0.5 the gradient
    is fully reversed from the first epoch; the default keeps the reference's 10."""
    from hf_mkcd.distillers import build_temperature, get_distiller_class
    from hf_mkcd.distillers.temperature import ctkd_lambda

    ctkd = get_distiller_class("ctkd")
    assert ctkd(temperature=build_temperature("ctkd")).temperature.decay_epochs == 10.0
    scaled = ctkd(temperature=build_temperature("ctkd"), decay_epochs=0.5).temperature
    assert scaled.decay_epochs == 0.5 and ctkd_lambda(1, scaled.decay_epochs) == -1.0
    assert ctkd_lambda(1, 10.0) > -0.05  # the reference barely reverses in its first epoch


def test_ctkd_temperature_is_trained_logged_and_checkpointed(data, tmp_path):
    teacher = tiny_teacher()
    trainer = DistillationTrainer(
        model=tiny_student(teacher, "dkd", data),
        teacher_model=teacher,
        args=tiny_args(
            tmp_path, method="dkd", temperature_schedule="ctkd", max_steps=3, save_strategy="steps", save_steps=3
        ),
        train_dataset=data.train,
    )
    theta = trainer.distiller.temperature.theta
    trainer.create_optimizer()
    assert any(p is theta for g in trainer.optimizer.param_groups for p in g["params"])
    before = theta.item()
    trainer.train()
    assert theta.item() != before
    temps = [e["temperature"] for e in trainer.state.log_history if "temperature" in e]
    assert len(temps) == 3 and all(1 < t < 21 for t in temps)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "checkpoint-3" / "distiller.safetensors")
    assert saved["temperature.theta"].item() == pytest.approx(theta.item())
    with pytest.raises(ValueError, match="uses no temperature"):
        tiny_args(tmp_path, method="at", temperature_schedule="ctkd")


def test_srrl_logits_are_the_teacher_head_on_the_pooled_connector(data):
    teacher = tiny_teacher()
    student = tiny_student(teacher, "srrl", data)
    assert student.config.projector == "srrl" and student.config.head == "teacher"
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        student.eval()
        out = student(pixel_values=x, output_features=True)
    assert out.projected_features.shape == (3, 64, 1, 1)
    torch.testing.assert_close(out.logits, teacher.fc(out.projected_features.flatten(1)))


def test_ofd_margin_and_partial_l2_by_hand():
    from scipy.stats import norm

    from hf_mkcd.distillers.ofd import ofd_margin, ofd_stage_loss

    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -5.0]))
    expected = []
    for g, b in ((1.0, 0.0), (-2.0, 1.0), (0.5, -5.0)):
        s, m = abs(g), b
        cdf = norm.cdf(-m / s)
        expected.append(m - s * np.exp(-((m / s) ** 2) / 2) / np.sqrt(2 * np.pi) / cdf if cdf > 1e-3 else -3 * s)
    margin = ofd_margin(bn)
    np.testing.assert_allclose(margin.numpy(), expected, rtol=1e-5)
    src, tgt = RNG.normal(size=(2, 3, 2, 2)), RNG.normal(size=(2, 3, 2, 2))
    t2 = np.maximum(tgt, np.array(expected).reshape(1, 3, 1, 1))
    mask = (src > t2) | (t2 > 0)
    want = np.sum((src - t2) ** 2 * mask) / 2
    assert ofd_stage_loss(torch.tensor(src), torch.tensor(tgt), margin.double()).item() == pytest.approx(want, rel=1e-5)


def test_ab_loss_by_hand():
    from hf_mkcd.distillers.ab import ab_stage_loss

    s = np.array([[-2.0, -0.5, 0.5, 2.0]]).reshape(1, 1, 2, 2)
    t = np.array([[1.0, -1.0, 1.0, -1.0]]).reshape(1, 1, 2, 2)
    # s=-2, t>0: s<=1 -> (s-1)^2 = 9 | s=-0.5, t<=0: s>-1 -> (s+1)^2 = 0.25 | s=0.5, t>0 -> 0.25 | s=2, t<=0 -> 9
    assert ab_stage_loss(torch.tensor(s), torch.tensor(t)).item() == pytest.approx(18.5)


def test_ofd_refuses_teachers_without_bn_before_relu(data):
    import timm

    from hf_mkcd.distillers import get_distiller_class

    from hf_mkcd.validation import check_pair

    ofd = get_distiller_class("ofd")
    shuffle = timm.create_model("cifar_shufflev1", in_chans=1, num_classes=10).eval()
    student = tiny_student(tiny_teacher(), "ofd", data)
    with pytest.raises(ValueError, match="ofd: .*no BN right before each stage's ReLU"):
        ofd(pair=check_pair(student, shuffle, ofd))
    generic = timm.create_model("resnet10t", in_chans=1, num_classes=10).eval()
    with pytest.raises(ValueError, match="does not expose"):
        ofd(pair=check_pair(student, generic, ofd))
    with pytest.raises(ValueError, match="builds modules from the teacher/student pair"):
        ofd()


def test_nce_and_hcl_by_hand():
    from hf_mkcd.distillers.crd import nce_loss
    from hf_mkcd.distillers.reviewkd import hcl_loss

    x = np.abs(RNG.normal(size=(2, 4))) + 0.1
    n, k = 100, 3
    pn = k / n
    want = -np.mean([np.log(r[0] / (r[0] + pn + 1e-7)) + np.sum(np.log(pn / (r[1:] + pn + 1e-7))) for r in x])
    assert nce_loss(torch.tensor(x), n).item() == pytest.approx(want, rel=1e-6)
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 3, 4, 4))

    def pool(f, s):
        b = 4 // s
        return f.reshape(2, 3, s, b, s, b).mean((3, 5))

    # h = 4: levels 2 and 1 are pooled (4 >= h is skipped), weights 1, 1/2, 1/4
    mse = lambda a, b: np.mean((a - b) ** 2)  # noqa: E731
    want = (mse(fs, ft) + 0.5 * mse(pool(fs, 2), pool(ft, 2)) + 0.25 * mse(pool(fs, 1), pool(ft, 1))) / 1.75
    assert hcl_loss([torch.tensor(fs)], [torch.tensor(ft)]).item() == pytest.approx(want, rel=1e-6)


def test_crd_memory_bank_momentum_and_checkpoint(data, tmp_path):
    teacher = tiny_teacher()
    trainer = DistillationTrainer(
        model=tiny_student(teacher, "crd", data),
        teacher_model=teacher,
        args=tiny_args(tmp_path, method="crd", max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=data.train,
    )
    crd = trainer.distiller
    assert crd.memory_s.shape == (len(data.train), 128) and crd.k == len(data.train) - 1
    before = crd.memory_s.clone()
    trainer.train()
    touched = (crd.memory_s != before).any(1)
    assert 0 < int(touched.sum()) <= 32  # exactly the rows of the 2 x 16 samples seen
    assert torch.allclose(crd.memory_s[touched].norm(dim=1), torch.ones(int(touched.sum())), atol=1e-5)
    assert crd.z_s.item() > 0 and crd.z_t.item() > 0
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "checkpoint-2" / "distiller.safetensors")
    assert torch.equal(saved["memory_s"], crd.memory_s) and "embed_s.weight" in saved


def test_mlkd_terms_by_hand_and_its_second_view(data, tmp_path):
    from hf_mkcd.distillers.mlkd import mlkd_terms

    sw, tw, ss, ts = (RNG.normal(size=(4, 3)) for _ in range(4))
    conf = softmax(tw).max(1)
    smask = (conf <= np.median(conf)).astype(float)
    cconf = softmax(tw).sum(0)
    cmask = (cconf <= np.median(cconf)).astype(float)
    inst = cls = bat = 0.0
    for T in (4, 3, 5, 2, 6):
        for s, t, sm, cm in ((sw, tw, smask, cmask), (ss, ts, np.ones(4), np.ones(3))):
            ps, pt = softmax(s, T), softmax(t, T)
            inst += np.mean([T**2 * kl(pt[i], ps[i]) for i in range(4)] * sm)
            cls += np.sum(((pt.T @ pt - ps.T @ ps) ** 2).sum(1) / 3 * cm)
            bat += np.sum(((pt @ pt.T - ps @ ps.T) ** 2).sum(1) / 4 * sm)
    got = mlkd_terms(*(torch.tensor(a) for a in (sw, tw, ss, ts)), weight=1.0)
    assert [g.item() for g in got] == pytest.approx([inst, cls, bat], rel=1e-5)
    teacher = tiny_teacher()
    with pytest.raises(ValueError, match="reads \\['pixel_values_strong'\\].*views=\\('strong',\\)"):
        DistillationTrainer(
            model=tiny_student(teacher, "mlkd", data),
            teacher_model=teacher,
            args=tiny_args(tmp_path, method="mlkd"),
            train_dataset=data.train,
        )


GENERIC_PAIRS = {
    # teacher factory, student, methods refused before training (and why)
    "resnet18->mobilenetv3_small_100": (
        lambda: __import__("timm").create_model("resnet18", num_classes=10).eval(),
        "mobilenetv3_small_100",
        {"ab": "pre-activation", "ofd": "pre-activation", "reviewkd": "pre-activation"},
    ),
    "vit->cifar_resnet8x4": (
        lambda: (
            __import__("timm").create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8).eval()
        ),
        "cifar_resnet8x4",
        {
            "ab": "pre-activation",
            "ofd": "pre-activation",
            "reviewkd": "pre-activation",
            "mkcd": "not a \\(B, C, H, W\\) map",
            "simkd": "not a \\(B, C, H, W\\) map",
            "srrl": "not a \\(B, C, H, W\\) map",
        },
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("pair", sorted(GENERIC_PAIRS))
def test_timm_models_outside_the_cifar_zoo(pair, tmp_path):
    from hf_mkcd import MKCDStudentForImageClassification

    make_teacher, student_name, refused = GENERIC_PAIRS[pair]
    data = tiny_data(n_train=16, views=("strong",), channels=3, size=32)
    trained = []
    for method in list_distillers():
        cls, teacher = get_distiller_class(method), make_teacher()
        if method in refused:
            with pytest.raises(ValueError, match=refused[method]):
                student = MKCDStudentForImageClassification.from_teacher(
                    teacher, student_name, projector=cls.projector, head=cls.head, id2label=data.id2label, image_size=32
                )
                DistillationTrainer(
                    model=student,
                    teacher_model=teacher,
                    train_dataset=data.train,
                    args=tiny_args(tmp_path / method, method=method, max_steps=1, per_device_train_batch_size=8),
                )
            continue
        student = MKCDStudentForImageClassification.from_teacher(
            teacher, student_name, projector=cls.projector, head=cls.head, id2label=data.id2label, image_size=32
        )
        trainer = DistillationTrainer(
            model=student,
            teacher_model=None if method == "none" else teacher,
            train_dataset=data.train,
            args=tiny_args(tmp_path / method, method=method, max_steps=1, per_device_train_batch_size=8),
        )
        trainer.train()
        assert all(math.isfinite(v) for e in trainer.state.log_history for k, v in e.items() if k.startswith("loss"))
        trained.append(method)
    assert set(trained) | set(refused) == set(list_distillers())


def test_only_what_the_method_reads_is_computed(data, tmp_path):
    teacher = tiny_teacher()
    student = tiny_student(teacher, "kd", data)

    def forbidden(*args, **kwargs):
        raise AssertionError("stage maps computed for a logit-only method")

    for model in (teacher, student.backbone):
        model.forward_intermediates = forbidden
        model.forward_stage_maps = forbidden
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=tiny_args(tmp_path, method="kd", max_steps=1),
        train_dataset=data.train,
    )
    trainer.train()
    assert trainer.state.global_step == 1


class OptimizerProbe(TrainerCallback):
    """Records, before each optimizer step, whether the optimizer holds any state (momentum buffers)."""

    def __init__(self):
        self.has_state = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.has_state.append(len(optimizer.state) > 0)


def test_ab_follows_repdistiller(data, tmp_path):
    """RepDistiller's AB: identity connectors where shapes match; the init stage updates connectors and feature
    layers only (classifier untouched: no gradient, no weight decay) with BN in train mode (init_modules.train()
    re-enables it); each stage starts with a fresh optimizer; the connectors are idle afterwards."""
    import timm

    from hf_mkcd.validation import check_pair

    ab = get_distiller_class("ab")
    same_shapes_teacher = timm.create_model("cifar_resnet32x4", in_chans=1, num_classes=10).eval()
    student = tiny_student(same_shapes_teacher, "ab", data, backbone="cifar_resnet8x4")
    built = ab(pair=check_pair(student, same_shapes_teacher, ab))
    assert len(built.connectors) == 3 and all(isinstance(c, torch.nn.Identity) for c in built.connectors)

    teacher = tiny_teacher()  # resnet20 stages (16, 32, 64 channels) vs resnet8x4's (64, 128, 256): ConvReg connectors
    student = tiny_student(teacher, "ab", data, backbone="cifar_resnet8x4")
    probe = OptimizerProbe()
    args = tiny_args(
        tmp_path,
        method="ab",
        max_steps=-1,
        num_train_epochs=2,
        distiller_kwargs='{"init_epochs": 1}',
        weight_decay=5e-4,
        logging_steps=1,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data.train, callbacks=[probe]
    )
    assert not any(isinstance(c, torch.nn.Identity) for c in trainer.distiller.connectors)
    head = {k: v.clone() for k, v in student.backbone.fc.state_dict().items()}
    bn_before = student.backbone.bn1.running_mean.clone()
    connectors = {k: v.clone() for k, v in trainer.distiller.connectors.state_dict().items()}

    class AtEpochEnd(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if round(state.epoch) == 1:  # the init stage is over
                self.head = {k: v.clone() for k, v in student.backbone.fc.state_dict().items()}
                self.connectors = {k: v.clone() for k, v in trainer.distiller.connectors.state_dict().items()}

    at_end = AtEpochEnd()
    trainer.add_callback(at_end)
    trainer.train()
    assert len(probe.has_state) == 6  # 48 samples / 16 = 3 steps per epoch
    for k in head:  # init stage: the classifier is exactly as built (weight decay did not touch it)
        assert torch.equal(at_end.head[k], head[k]), k
    assert not torch.equal(student.backbone.bn1.running_mean, bn_before)  # BN statistics updated, as in the reference
    assert any(not torch.equal(at_end.connectors[k], connectors[k]) for k in connectors)  # connectors trained
    assert probe.has_state == [False, True, True, False, True, True]  # a fresh optimizer at each stage
    for k, v in trainer.distiller.connectors.state_dict().items():  # main stage: connectors idle
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v, at_end.connectors[k]), k
    assert any(not torch.equal(v, at_end.head[k]) for k, v in student.backbone.fc.state_dict().items())  # CE trains it
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all("loss_ab" in e for e in logs[:3]) and all("loss_ce" in e and "loss_ab" not in e for e in logs[3:])


def test_crd_scores_by_whole_bank_matmul_equal_the_row_gather():
    """CRD's fast path (matmul with the whole bank, gather scalars) gives the reference's scores and gradients."""
    from hf_mkcd.distillers.crd import CRD

    crd = CRD.__new__(CRD)
    torch.nn.Module.__init__(crd)
    crd.hparams = {"nce_t": 0.07}
    g = torch.Generator().manual_seed(0)
    memory = torch.nn.functional.normalize(torch.randn(50, 8, generator=g))
    idx = torch.randint(0, 50, (6, 20), generator=g)  # 50 rows * 4 <= 120 entries: the matmul path
    anchor = torch.nn.functional.normalize(torch.randn(6, 8, generator=g)).requires_grad_(True)
    fast = crd._scores(anchor, memory, idx)
    fast.sum().backward()
    fast_grad, anchor.grad = anchor.grad.clone(), None
    slow = torch.exp(torch.bmm(memory[idx], anchor.unsqueeze(2)).squeeze(2) / 0.07)  # RepDistiller's formulation
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, anchor.grad, rtol=1e-5, atol=1e-5)
    big = torch.nn.functional.normalize(torch.randn(500, 8, generator=g))  # 500 * 4 > 120: the row-gather path
    torch.testing.assert_close(
        crd._scores(anchor.detach(), big, idx),
        torch.exp(torch.bmm(big[idx], anchor.detach().unsqueeze(2)).squeeze(2) / 0.07),
    )


def test_mlkd_says_below_cifar100s_class_count_before_training():
    mlkd = get_distiller_class("mlkd")()
    (problem,) = mlkd.setting_problems(10, 4000)
    assert "about 100x larger with 10 classes" in problem
    assert mlkd.setting_problems(100, 50_000) == []  # CIFAR-100: silent


# RepDistiller's ``get_feat_modules()`` per family, written out by hand: what AB's initialisation leaves out
AB_LEFT_OUT = {
    "cifar_resnet8x4": ("fc.",),  # conv1, bn1, layer1-3 are the feature modules
    "cifar_wrn_16_2": ("bn1.", "fc."),  # conv1, block1-3: the final BN is left out
    "cifar_mobilenetv2": ("conv2.", "classifier."),  # conv1, blocks: the last 1x1 conv (+BN) is left out
    "cifar_shufflev2": ("conv2.", "bn2.", "linear."),  # conv1, bn1, layer1-3: the last 1x1 conv and BN are left out
}
AB_TEACHER = {
    "cifar_resnet8x4": "cifar_resnet32x4",
    "cifar_wrn_16_2": "cifar_wrn_40_2",
    "cifar_mobilenetv2": "cifar_vgg13",
    "cifar_shufflev2": "cifar_resnet32x4",
}  # the recipes' pairs


@pytest.mark.parametrize("backbone", sorted(AB_LEFT_OUT))
def test_ab_initialisation_trains_exactly_repdistillers_feature_modules(data, tmp_path, backbone):
    """During AB's initialisation the modules outside ``get_feat_modules()`` get no update (weight decay included)
    and run in eval mode (their BN statistics stay, WRN's last pre-activation map reads running statistics); every
    feature module trains, its BN layers in train mode."""
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model(AB_TEACHER[backbone], in_chans=1, num_classes=10).eval()
    student = tiny_student(teacher, "ab", data, backbone=backbone)
    args = tiny_args(tmp_path, method="ab", max_steps=2, distiller_kwargs='{"init_epochs": 5}', weight_decay=5e-4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data.train)
    backbone_module = student.backbone
    before = {k: v.clone() for k, v in backbone_module.state_dict().items()}
    modes = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, _, name=n: modes.setdefault(name, set()).add(m.training))
        for n, m in backbone_module.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    trainer.train()
    for h in hooks:
        h.remove()
    left_out = AB_LEFT_OUT[backbone]
    after = backbone_module.state_dict()
    for key, value in before.items():
        if "num_batches_tracked" in key:
            continue
        if key.startswith(left_out):
            assert torch.equal(after[key], value), f"{key} moved during the initialisation"
        else:
            assert not torch.equal(after[key], value), f"{key} did not train during the initialisation"
    for name, seen in modes.items():
        assert seen == ({False} if f"{name}.".startswith(left_out) else {True}), (name, seen)
    assert any(f"{name}.".startswith(left_out) for name in modes) == (backbone != "cifar_resnet8x4")


def test_wrn_preact_maps_update_bn_statistics_twice_like_the_references():
    """RepDistiller (AB) and mdistiller read WRN's pre-activation maps by running the following BN once more: in
    training mode its running mean moves twice per step, 1 - 0.9^2 = 0.19 of the way to the batch mean."""
    import timm

    model = timm.create_model("cifar_wrn_16_2").train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        block3 = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
    model.forward_stage_maps(x)
    torch.testing.assert_close(model.bn1.running_mean, 0.19 * block3.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    model.bn1.reset_running_stats()
    model.forward_features(x)  # no pre-activation maps asked for: one update
    torch.testing.assert_close(model.bn1.running_mean, 0.1 * block3.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "student, last_block, expanded", [("cifar_mobilenetv2", [160, 1, 1], 1280), ("cifar_shufflev2", [464, 2, 2], 1024)]
)
def test_reused_head_students_read_the_map_each_reference_reads(student, last_block, expanded, tmp_path):
    """SimKD's reference projects the student's last block (``feat_s[-2]``: 160 channels for MobileNetV2, 464 for
    ShuffleNetV2), not the 1x1 expansion its own classifier pools; MKCD follows it, SRRL's reference reads the
    pooled expansion. The choice is recorded (``prepool: false``), so the saved student reloads bit for bit."""
    from transformers import AutoModelForImageClassification

    from hf_mkcd import MKCDStudentForImageClassification

    torch.manual_seed(0)
    teacher = __import__("timm").create_model("cifar_vgg13", in_chans=1, num_classes=10).eval()
    for projector, shape in (("simkd", last_block), ("mkcd", last_block), ("srrl", [expanded, *last_block[1:]])):
        model = MKCDStudentForImageClassification.from_teacher(teacher, student, projector=projector, image_size=16)
        assert model.config.student_feature_shape == shape, projector
        assert not any(n.startswith(("conv2.", "bn2.")) for n, _ in model.backbone.named_parameters()) == (
            projector != "srrl"
        )
    asked = MKCDStudentForImageClassification.from_teacher(
        teacher, student, projector="mkcd", image_size=16, student_map="prepool"
    )
    assert asked.config.student_feature_shape == [expanded, *last_block[1:]]  # the ablation's other arm
    mkcd = MKCDStudentForImageClassification.from_teacher(teacher, student, projector="mkcd", image_size=16).eval()
    mkcd.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(mkcd(x).logits, loaded(x).logits)
    with pytest.raises(ValueError, match="student_map 'middle': choose one of last_block, prepool"):
        MKCDStudentForImageClassification.from_teacher(teacher, student, image_size=16, student_map="middle")
