"""Loss terms against independent hand computations (numpy, written out from the formulas)."""

import math

import numpy as np
import pytest
import torch

from hf_mkcd.distillers import Step, build_temperature, get_distiller_class, kd_loss, list_distillers


def np_softmax(z, t):
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def test_kd_loss_matches_formula():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    T = 4.0
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    expected = T**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1))
    got = kd_loss(torch.tensor(s), torch.tensor(t), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(torch.tensor(s), torch.tensor(s), T).item() == pytest.approx(0.0, abs=1e-7)


def test_mkcd_terms_by_hand():
    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    f_s, f_t = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    y = np.array([0, 3, 1, 4])
    T = 2.0
    mkcd = get_distiller_class("mkcd")(feat_weight=2.0, kd_weight=0.5, ce_weight=0.25, feat_norm="none", mid_weight=0.0)
    terms = mkcd(
        {"logits": torch.tensor(z_s), "projected": torch.tensor(f_s)},
        {"logits": torch.tensor(z_t), "features_aligned": torch.tensor(f_t)},
        {"labels": torch.tensor(y)},
        Step(temperature=T),
    )
    ps, pt = np_softmax(z_s, T), np_softmax(z_t, T)
    kd = T**2 * np.mean(np.sum(pt * np.log(pt / ps), axis=1))
    ce = -np.mean(np.log(np_softmax(z_s, 1.0)[np.arange(4), y]))
    mse = np.mean((f_s - f_t) ** 2)
    assert terms["loss_feat"].item() == pytest.approx(2.0 * mse, rel=1e-6)
    assert terms["loss_kd"].item() == pytest.approx(0.5 * kd, rel=1e-6)
    assert terms["loss_ce"].item() == pytest.approx(0.25 * ce, rel=1e-6)


def test_kd_defaults_and_none():
    z_s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z_t = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])
    terms = get_distiller_class("kd")()({"logits": z_s}, {"logits": z_t}, {"labels": y}, Step(temperature=4.0))
    ce = torch.nn.functional.cross_entropy(z_s, y).item()
    assert terms["loss_ce"].item() == pytest.approx(0.1 * ce)
    assert terms["loss_kd"].item() == pytest.approx(0.9 * kd_loss(z_s, z_t, 4.0).item())
    none = get_distiller_class("none")()({"logits": z_s}, {}, {"labels": y}, Step())
    assert set(none) == {"loss_ce"} and none["loss_ce"].item() == pytest.approx(ce)


def test_simkd_is_mse_only():
    f_s, f_t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    terms = get_distiller_class("simkd")()({"logits": None, "projected": f_s}, {"features_aligned": f_t}, {}, Step())
    assert set(terms) == {"loss_feat"}
    assert terms["loss_feat"].item() == pytest.approx(((f_s - f_t) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("constant", (4.0, 4.0, 4.0)),
        ("linear_rising", (1.0, 4.5, 8.0)),
        ("linear_falling", (8.0, 4.5, 1.0)),
        ("cosine_rising", (1.0, 4.5, 8.0)),
        ("cosine_falling", (8.0, 4.5, 1.0)),
    ],
)
def test_temperature_schedules(name, expected):
    s = build_temperature(name, temperature=4.0, temperature_min=1.0, temperature_max=8.0)
    assert [s(Step(progress=p)) for p in (0.0, 0.5, 1.0)] == pytest.approx(list(expected))
    assert not list(s.parameters())  # a fixed schedule has no state to train or checkpoint
    if name.startswith("cosine"):
        quarter = 1.0 + 7.0 * (1 - math.cos(math.pi / 4)) / 2
        assert s(Step(progress=0.25)) == pytest.approx(quarter if "rising" in name else 9.0 - quarter)


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'mkdc'. Did you mean [a-z, ]*mkcd") as err:
        get_distiller_class("mkdc")
    assert str(err.value).endswith("Valid methods: " + ", ".join(list_distillers()))
    with pytest.raises(ValueError, match="unknown temperature schedule 'warm'.*constant"):
        build_temperature("warm")
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            build_temperature("constant", temperature=bad)
    with pytest.raises(ValueError, match="has no \\['feat_weight'\\]; its hyper-parameters are"):
        get_distiller_class("kd")(feat_weight=1.0)
    assert {"kd", "mkcd", "none", "simkd"} <= set(list_distillers())
