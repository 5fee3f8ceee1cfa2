"""MLKD's strong view: its operation list against the reference's, operations against hand computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mkcd.augment import CUTOUT_FILL_RGB, MLKD_OPS, crop_flip, cutout, mlkd_strong_view

# MLKD's dataset/cifar100.py augment_list(): (operation, low, high), in its order
REFERENCE_OPS = [
    ("autocontrast", 0, 1),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0, 1),
    ("identity", 0, 1),
    ("posterize", 4, 8),
    ("rotate", -30, 30),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0, 256),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
]
OPS = {name: op for name, op, _, _ in MLKD_OPS}


def ramp(size=8):
    """An RGB image whose pixel (x, y) is (8x + y, 100 + y, 200 - x): every pixel distinct per channel pair."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([8 * x + y, 100 + y, 200 - x], -1).astype(np.uint8)


def test_operation_list_and_ranges_are_the_references():
    assert [(n, lo, hi) for n, _, lo, hi in MLKD_OPS] == REFERENCE_OPS


def test_operations_by_hand():
    a = ramp()
    img = Image.fromarray(a)
    np.testing.assert_array_equal(np.asarray(OPS["identity"](img, 0.3)), a)
    # brightness v: blend with black -> round(v * x)
    np.testing.assert_allclose(np.asarray(OPS["brightness"](img, 0.5)).astype(int), np.round(a * 0.5), atol=1)
    # posterize to 4 bits keeps the top 4 bits
    np.testing.assert_array_equal(np.asarray(OPS["posterize"](img, 4.7)), a & 0xF0)
    # solarize at 100: values >= 100 are inverted
    np.testing.assert_array_equal(np.asarray(OPS["solarize"](img, 100.0)), np.where(a < 100, a, 255 - a))
    # shear_x v (about the top-left corner, nearest): out(x, y) = in(x + v*y, y), black outside
    out = np.asarray(OPS["shear_x"](img, 0.25))
    for yy in range(8):
        for xx in range(8):
            src = int(np.floor(xx + 0.25 * yy + 0.25 * 0.5 + 0.5))  # PIL samples at pixel centres
            want = a[yy, src] if src < 8 else 0
            np.testing.assert_array_equal(out[yy, xx], want, err_msg=f"{xx},{yy}")
    # translate_x v: out(x, y) = in(x + v*width, y)
    out = np.asarray(OPS["translate_x"](img, 0.25))
    np.testing.assert_array_equal(out[:, :6], a[:, 2:])
    np.testing.assert_array_equal(out[:, 6:], 0)
    out = np.asarray(OPS["translate_y"](img, -0.25))
    np.testing.assert_array_equal(out[2:], a[:6])
    np.testing.assert_array_equal(out[:2], 0)


def test_cutout_square_fill_and_size():
    img = Image.fromarray(np.full((32, 32, 3), 7, np.uint8))
    g = torch.Generator().manual_seed(3)
    out = np.asarray(cutout(img, 0.25, g))
    mask = (out == CUTOUT_FILL_RGB).all(-1)
    ys, xs = np.nonzero(mask)
    # side 0.25 * 32 = 8 pixels, PIL's rectangle includes its far edge: 9 x 9 unless clipped by the border
    assert 1 <= ys.max() - ys.min() + 1 <= 9 and 1 <= xs.max() - xs.min() + 1 <= 9
    assert mask.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one filled rectangle
    assert (out[~mask] == 7).all()
    gray = np.asarray(cutout(Image.fromarray(np.zeros((32, 32), np.uint8)), 0.5, torch.Generator().manual_seed(1)))
    assert set(np.unique(gray)) == {0, 123}
    assert np.array_equal(np.asarray(cutout(img, 0.0, g)), np.asarray(img))


def test_strong_view_is_a_function_of_the_generator():
    x = torch.from_numpy(ramp(16)).permute(2, 0, 1).contiguous()
    views = [mlkd_strong_view(x, torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert views[0].dtype == torch.uint8 and views[0].shape == x.shape
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    gray = mlkd_strong_view(x[:1].clone(), torch.Generator().manual_seed(0))
    assert gray.shape == (1, 16, 16)
    flipped = crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    assert torch.equal(flipped, x) or torch.equal(flipped, x.flip(-1))


def test_the_pipeline_makes_the_views_a_method_asks_for():
    from conftest import tiny_data

    data = tiny_data(n_train=16, views=("strong",))
    sample = data.train[3]
    assert set(sample) >= {"pixel_values", "pixel_values_strong", "labels", "index", "aug_epoch"}
    assert sample["pixel_values_strong"].shape == sample["pixel_values"].shape
    assert torch.equal(data.train[3]["pixel_values_strong"], sample["pixel_values_strong"])  # same (seed, epoch, index)
    assert "pixel_values_strong" not in data.eval[0]  # evaluation sees plain images
    assert "pixel_values_strong" not in tiny_data(n_train=16).train[0]
    with pytest.raises(ValueError, match="unknown view"):
        tiny_data(n_train=16, views=("sharp",))


def test_the_batched_crop_flip_equals_the_per_sample_pipeline():
    """The augmentation a GPU-resident dataset would run on the device, here on CPU tensors: one gather for the
    batch, with the per-sample draws of (seed, epoch, index), gives exactly the pixels of the DataLoader path."""
    from hf_mkcd.augment import crop_flip_batch, crop_flip_draws
    from hf_mkcd.data import ImageTransform

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    indices = [3, 17, 0, 42, 5, 9]
    transform = ImageTransform("img", "label", 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True, "crop_flip", seed=7)
    transform.set_epoch(4)
    per_sample = transform({"img": list(images.permute(0, 2, 3, 1).numpy()), "label": [0] * 6, "__index__": indices})[
        "pixel_values"
    ]
    top, left, flip = crop_flip_draws(7, 4, indices)
    batched = transform.normalize(crop_flip_batch(images, top, left, flip))
    assert flip.any() and not flip.all()  # both branches are exercised
    for a, b in zip(per_sample, batched):
        assert torch.equal(a, b)
