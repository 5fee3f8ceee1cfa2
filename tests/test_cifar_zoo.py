"""The CIFAR zoo: community checkpoint layout, parameter counts, timm's model and feature API."""

import os

import pytest
import timm
import torch

from hf_mkcd import CIFAR_MODELS, CIFAR100_MEAN, CIFAR100_STD

HERE = os.path.dirname(__file__)

# the mdistiller definitions (megvii-research/mdistiller@a08d46f mdistiller/models/cifar), instantiated with 100 classes
PARAMS = {
    "cifar_resnet20": 278_324,
    "cifar_resnet32": 472_756,
    "cifar_resnet56": 861_620,
    "cifar_resnet110": 1_736_564,
    "cifar_resnet8x4": 1_233_540,
    "cifar_resnet32x4": 7_433_860,
    "cifar_wrn_16_2": 703_284,
    "cifar_wrn_40_1": 569_780,
    "cifar_wrn_40_2": 2_255_156,
    "cifar_vgg8": 3_965_028,
    "cifar_vgg13": 9_462_180,
    "cifar_resnet50": 23_705_252,
    "cifar_mobilenetv2": 812_836,
    "cifar_shufflev1": 949_258,
    "cifar_shufflev2": 1_355_528,
}
# the same definitions: (pre-pool map C, H, W), stage maps (stem, s1, s2, s3[, s4]) at 32x32
SHAPES = {
    "cifar_resnet8x4": ((256, 8, 8), [(32, 32), (64, 32), (128, 16), (256, 8)]),
    "cifar_wrn_40_2": ((128, 8, 8), [(16, 32), (32, 32), (64, 16), (128, 8)]),
    "cifar_vgg13": ((512, 4, 4), [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)]),
    "cifar_resnet50": ((2048, 4, 4), [(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)]),
    "cifar_mobilenetv2": ((1280, 2, 2), [(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)]),
    "cifar_shufflev1": ((960, 4, 4), [(24, 32), (240, 16), (480, 8), (960, 4)]),
    "cifar_shufflev2": ((1024, 4, 4), [(24, 32), (116, 16), (232, 8), (464, 4)]),
}


def reference_layout():
    sections, cur = {}, None
    with open(os.path.join(HERE, "data", "cifar_state_dict_keys.txt")) as f:
        for line in f:
            if line.startswith("## "):
                cur = line.split()[1]
                sections[cur] = []
            elif line.strip() and not line.startswith("#"):
                key, shape = line.rstrip("\n").split("\t")
                sections[cur].append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return sections


REFERENCE = reference_layout()


def test_all_fifteen_registered():
    assert sorted(timm.list_models("cifar_*")) == sorted(CIFAR_MODELS)


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_state_dict_layout_and_param_count(name):
    model = timm.create_model(name, num_classes=100)
    layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert layout == REFERENCE[CIFAR_MODELS[name]]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(CIFAR_MODELS))
def test_timm_api_and_feature_info(name):
    model = timm.create_model(name).eval()
    assert model.pretrained_cfg["mean"] == CIFAR100_MEAN and model.pretrained_cfg["std"] == CIFAR100_STD
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feat = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(feat, pre_logits=True)
        final, inter = model.forward_intermediates(x)
    assert logits.shape == (2, 100)
    assert pooled.shape == (2, model.num_features) and feat.shape[1] == model.num_features
    torch.testing.assert_close(final, feat)
    torch.testing.assert_close(model.get_classifier()(pooled), logits)
    assert len(inter) == len(model.feature_info)
    for t, info in zip(inter, model.feature_info):
        assert t.shape[1] == info["num_chs"] and t.shape[-1] == 32 // info["reduction"]
    if name in SHAPES:
        assert tuple(feat.shape[1:]) == SHAPES[name][0]
        assert [(t.shape[1], t.shape[-1]) for t in inter] == SHAPES[name][1]
    model.reset_classifier(10)
    assert model(x).shape == (2, 10) and model.num_classes == 10
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_features_only_uses_forward_intermediates():
    net = timm.create_model("cifar_resnet8x4", features_only=True, out_indices=(1, 3))
    outs = net(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (256, 8, 8)]
    assert net.feature_info.channels() == [64, 256]


@pytest.mark.parametrize(
    "name",
    [
        "cifar_resnet20",
        "cifar_wrn_16_2",
        "cifar_vgg8",
        "cifar_mobilenetv2",
        "cifar_shufflev1",
        "cifar_shufflev2",
        "cifar_resnet50",
    ],
)
def test_grayscale_28x28(name):
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet_logits_are_fc_of_global_mean_of_stage3():
    """Hand check of the reference function: logits = fc(mean_hw(relu(layer3 out)))."""
    model = timm.create_model("cifar_resnet20").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h = torch.relu(model.bn1(model.conv1(x)))
        for stage in (model.layer1, model.layer2, model.layer3):
            for block in stage:
                identity = h if block.downsample is None else block.downsample(h)
                out = torch.relu(block.bn1(block.conv1(h)))
                h = torch.relu(block.bn2(block.conv2(out)) + identity)
        expected = model.fc(h.mean((2, 3)))
        torch.testing.assert_close(model(x), expected)


def test_wrn_prepool_is_bn_relu_of_last_block():
    model = timm.create_model("cifar_wrn_16_2").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        block3 = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        pre = model.forward_intermediates(x, indices=[3], preact=True, intermediates_only=True)[0]
        torch.testing.assert_close(pre, model.bn1(block3))
        torch.testing.assert_close(model.forward_features(x), torch.relu(model.bn1(block3)))


def test_resnet_preact_is_pre_relu():
    model = timm.create_model("cifar_resnet8x4").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        post = model.forward_intermediates(x, intermediates_only=True)
        pre = model.forward_intermediates(x, preact=True, intermediates_only=True)
    for a, b in zip(post[1:], pre[1:]):
        torch.testing.assert_close(a, torch.relu(b))
        assert (b < 0).any()


def test_reference_initialisation():
    torch.manual_seed(0)
    wrn = timm.create_model("cifar_wrn_40_2")
    conv = wrn.block3.layer[0].conv1  # 3x3, 128 output channels
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 128)) ** 0.5, rel=0.05)
    assert torch.equal(wrn.bn1.weight, torch.ones(128)) and torch.equal(wrn.fc.bias, torch.zeros(100))
    vgg = timm.create_model("cifar_vgg13")
    assert vgg.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(vgg.block0[0].bias, torch.zeros(64))
    resnet = timm.create_model("cifar_resnet8x4")  # kaiming normal, fan_out
    assert resnet.layer3[0].conv1.weight.std().item() == pytest.approx((2 / (9 * 256)) ** 0.5, rel=0.05)
