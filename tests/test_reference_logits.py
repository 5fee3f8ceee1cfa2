"""Same function as the reference definitions: logits of the reference (mdistiller) models, measured
once on seeded weights and stored in tests/data/reference_logits.json, against ours on the same weights.

The reference code is not part of this repository; only the numbers it produced are."""

import json
import os

import pytest
import timm
import torch

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "data", "reference_logits.json")
GOLDEN = json.load(open(GOLDEN_PATH))


def INPUT():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def seeded_model(name: str):
    """Our model with seeded conv/linear weights and non-trivial BN statistics (eval mode)."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    return model


def test_golden_file_covers_the_non_trivial_families():
    assert {"cifar_shufflev1", "cifar_shufflev2", "cifar_mobilenetv2", "cifar_wrn_40_2", "cifar_vgg13"} <= set(
        GOLDEN["logits"]
    )


@pytest.mark.parametrize("name", sorted(GOLDEN["logits"]))
def test_logits_equal_the_reference_implementation(name):
    expected = torch.tensor(GOLDEN["logits"][name])
    with torch.no_grad():
        ours = seeded_model(name)(INPUT())
    scale = expected.abs().max().item()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale))
