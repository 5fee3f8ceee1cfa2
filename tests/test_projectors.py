"""Projectors: output shapes for homogeneous and heterogeneous pairs, parameter counts, errors."""

import pytest
import timm
import torch

from hf_mkcd.models.projectors import (
    ConvRegressor,
    EncoderDecoderProjector,
    SimKDProjector,
    build_projector,
    count_parameters,
)


def prepool_shape(name):
    with torch.no_grad():
        return tuple(timm.create_model(name).eval().forward_features(torch.zeros(1, 3, 32, 32)).shape[1:])


PAIRS = [  # teacher -> student, and the projector's planned spatial handling
    ("cifar_resnet32x4", "cifar_resnet8x4"),
    ("cifar_resnet32x4", "cifar_shufflev2"),
    ("cifar_vgg13", "cifar_mobilenetv2"),
    ("cifar_wrn_40_2", "cifar_resnet8x4"),
    ("cifar_resnet50", "cifar_mobilenetv2"),
    ("cifar_wrn_40_2", "cifar_shufflev1"),
]


@pytest.mark.parametrize("teacher,student", PAIRS)
@pytest.mark.parametrize("kind", ["mkcd", "simkd"])
def test_projector_maps_student_map_onto_teacher_map(teacher, student, kind):
    s, t = prepool_shape(student), prepool_shape(teacher)
    proj = build_projector(kind, s, t)
    y = proj(torch.randn(2, *s))
    assert y.shape[:2] == (2, t[0])
    assert tuple(y.shape[-2:]) == tuple(proj.output_size)
    aligned = proj.align_teacher(torch.randn(2, *t))
    assert aligned.shape == y.shape


def test_mkcd_learns_2x_resampling_only_when_asked_simkd_pools():
    up = EncoderDecoderProjector((1024, 4, 4), (256, 8, 8), resample="learned")  # shufflev2 -> resnet32x4
    assert up.plan == "up2" and up(torch.randn(1, 1024, 4, 4)).shape == (1, 256, 8, 8)
    down = EncoderDecoderProjector((512, 4, 4), (1280, 2, 2), resample="learned")  # vgg8-like -> mobilenetv2
    assert down.plan == "down2" and down.encoder[1][0].stride == (2, 2)
    pooled = EncoderDecoderProjector((1024, 4, 4), (256, 8, 8))  # the default pools the larger map, as SimKD
    assert pooled.plan == "pool" and pooled(torch.randn(1, 1024, 4, 4)).shape == (1, 256, 4, 4)
    assert pooled.encoder[1][0].stride == (1, 1)
    simkd = SimKDProjector((1024, 4, 4), (256, 8, 8))
    assert simkd.plan == "pool" and simkd.output_size == (4, 4)
    odd = EncoderDecoderProjector((64, 8, 8), (64, 3, 3))  # no 2x relation: pool the larger map
    assert odd.plan == "pool" and odd(torch.randn(1, 64, 8, 8)).shape == (1, 64, 3, 3)


def test_simkd_parameter_counts_match_reference():
    # SimKD's projector (DefangChen/SimKD models/util.py, instantiated): C_s*m + 9m^2 + m*C_t + 2(2m + C_t)
    assert count_parameters(SimKDProjector((256, 8, 8), (256, 8, 8))) == 214_016
    assert count_parameters(SimKDProjector((64, 8, 8), (128, 8, 8))) == 49_664
    assert count_parameters(SimKDProjector((464, 4, 4), (256, 8, 8))) == 240_640
    assert count_parameters(SimKDProjector((256, 8, 8), (256, 8, 8), factor=8)) == 26_240


def test_mkcd_parameter_count_by_hand():
    def by_hand(c_s, c_t, factor):
        m = c_t // factor
        z = m // 2
        return c_s * m + 9 * m * z + 9 * z * m + m * c_t + 2 * (m + z + m + c_t)

    # defaults: residual, f=4; the shortcut is the identity where channels match: no parameters
    assert count_parameters(EncoderDecoderProjector((256, 8, 8), (256, 8, 8))) == by_hand(256, 256, 4) == 70464
    # where channels differ the shortcut is a 1x1 conv + BN
    assert (
        count_parameters(EncoderDecoderProjector((128, 8, 8), (256, 8, 8)))
        == by_hand(128, 256, 4) + 128 * 256 + 2 * 256
    )
    plain = EncoderDecoderProjector((256, 8, 8), (256, 8, 8), factor=2, residual=False)
    assert count_parameters(plain) == by_hand(256, 256, 2)
    with_skip = EncoderDecoderProjector((256, 8, 8), (256, 8, 8), factor=2, residual=False, skip=True)
    assert count_parameters(with_skip) == by_hand(256, 256, 2) + 256 * 256 + 2 * 256


def test_fitnet_regressor_kernels_and_undefined_case():
    assert ConvRegressor((32, 16, 16), (64, 8, 8)).conv.stride == (2, 2)
    assert isinstance(ConvRegressor((32, 8, 8), (64, 16, 16)).conv, torch.nn.ConvTranspose2d)
    assert ConvRegressor((32, 10, 10), (64, 8, 8)).conv.kernel_size == (3, 3)
    for s, t in [((32, 16, 16), (64, 8, 8)), ((32, 8, 8), (64, 16, 16)), ((32, 10, 10), (64, 8, 8))]:
        assert ConvRegressor(s, t)(torch.randn(1, *s)).shape == (1, *t)
    with pytest.raises(ValueError, match="no regressor is defined"):
        ConvRegressor((32, 6, 6), (64, 8, 8))


def test_bad_inputs_raise_clearly():
    with pytest.raises(ValueError, match="unknown projector 'bogus'.*fitnet.*mkcd.*simkd"):
        build_projector("bogus", (8, 4, 4), (8, 4, 4))
    with pytest.raises(ValueError, match="Token features"):
        build_projector("mkcd", (197, 384), (256, 8, 8))
    with pytest.raises(ValueError, match="leaves no channels"):
        build_projector("mkcd", (8, 4, 4), (2, 4, 4), factor=2, latent_ratio=2)
    with pytest.raises(ValueError, match="unknown out_act"):
        build_projector("simkd", (8, 4, 4), (8, 4, 4), out_act="gelu")


def test_residual_encoder_decoder_starts_as_its_shortcut(tmp_path):
    """projector_residual: identity shortcut where the maps match (a 1x1 conv + BN where channels differ), the
    decoder's last BN at zero, so the untrained projector passes the student's map through (then the ReLU)."""
    import timm

    from hf_mkcd import MKCDStudentForImageClassification

    teacher = timm.create_model("cifar_resnet56", num_classes=10, in_chans=1).eval()
    student = MKCDStudentForImageClassification.from_teacher(
        teacher, "cifar_resnet20", projector="mkcd", projector_kwargs={"residual": True}, image_size=16
    )
    proj = student.projector.eval()
    assert float(proj.decoder[-1][1].weight.detach().abs().sum()) == 0.0  # survived the model's weight initialisation
    assert not list(proj.shortcut.parameters())  # 64 -> 64 channels: the identity
    x = torch.relu(torch.randn(2, 64, 4, 4))
    torch.testing.assert_close(proj(x), x)
    student.save_pretrained(tmp_path / "s")
    again = MKCDStudentForImageClassification.from_pretrained(tmp_path / "s")
    for k, v in student.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    # other channels and size: a learned shortcut (after a 2x2 average pool where the resampling is learned; by
    # default the input is pooled before the projector, so the shortcut has nothing to resample)
    wide = build_projector("mkcd", (32, 8, 8), (64, 4, 4), residual=True, resample="learned")
    assert isinstance(wide.shortcut[0], torch.nn.AvgPool2d) and isinstance(wide.shortcut[1][0], torch.nn.Conv2d)
    wide = build_projector("mkcd", (32, 8, 8), (64, 4, 4), residual=True)
    assert isinstance(wide.shortcut[0], torch.nn.Identity) and isinstance(wide.shortcut[1][0], torch.nn.Conv2d)
    assert wide(torch.randn(2, 32, 8, 8)).shape == (2, 64, 4, 4)
    with pytest.raises(ValueError, match="skip and residual are two forms of the same shortcut"):
        build_projector("mkcd", (64, 4, 4), (64, 4, 4), residual=True, skip=True)
    with pytest.raises(ValueError, match="projector 'srrl' takes no \\['factor'\\]"):
        build_projector("srrl", (64, 4, 4), (64, 4, 4), factor=2)
