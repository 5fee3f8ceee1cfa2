"""Data: the Hub schema through a local parquet copy, offline sources, channels, columns, errors."""

import os
import time

import numpy as np
import pytest
import torch
from cifar100_schema import FEATURES, write_cifar100_parquet
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from hf_mkcd.data import (
    FASHION_MNIST_DIR,
    DataArguments,
    detect_columns,
    load_image_dataset,
    prepare_datasets,
    to_channels,
)


def test_cifar100_hub_schema_via_local_parquet(tmp_path):
    root = write_cifar100_parquet(tmp_path)
    ds = load_image_dataset(str(root))
    assert set(ds) == {"train", "test"} and ds["train"].features == FEATURES
    data = prepare_datasets(
        DataArguments(dataset_name=str(root)),
        channels=3,
        image_size=32,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    )
    assert (data.image_column, data.label_column) == ("img", "fine_label")
    assert len(data.id2label) == 100 and data.id2label[26] == "cra"
    row = data.eval[3]
    assert row["pixel_values"].shape == (3, 32, 32) and row["labels"] == ds["test"][3]["fine_label"]
    raw = torch.from_numpy(np.array(ds["test"][3]["img"])).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.5071, 0.4867, 0.4408]).view(3, 1, 1)
    std = torch.tensor([0.2675, 0.2565, 0.2761]).view(3, 1, 1)
    torch.testing.assert_close(row["pixel_values"], (raw - mean) / std)  # eval: no augmentation, exact normalisation


def test_hub_id_offline_fails_fast_naming_the_offline_choices():
    start = time.time()
    with pytest.raises(ConnectionError, match="Offline choices: fashion_mnist, fashion_mnist_pairs, digits"):
        load_image_dataset("uoft-cs/cifar100")
    assert time.time() - start < 20


def test_digits_and_channel_conversion():
    data = prepare_datasets(DataArguments(dataset_name="digits", augmentation="none"), channels=3, image_size=16)
    x = data.train[0]["pixel_values"]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert len(data.train) == 1437 and len(data.eval) == 360 and data.source_channels == 1
    rgb = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    gray = to_channels(rgb, 1)
    expected = (0.299 * rgb[0].float() + 0.587 * rgb[1].float() + 0.114 * rgb[2].float()).round()
    assert gray.shape == (1, 4, 4) and torch.equal(gray[0].float(), expected)
    assert to_channels(torch.zeros(4, 2, 2, dtype=torch.uint8), 3).shape == (3, 2, 2)  # RGBA drops alpha
    with pytest.raises(ValueError, match="2 channels and the model takes 3"):
        to_channels(torch.zeros(2, 2, 2, dtype=torch.uint8), 3)


def save_images(tmp_path, name, images, labels=None, features=None):
    labels = labels if labels is not None else [i % 2 for i in range(len(images))]
    features = features or Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    ds = Dataset.from_dict({"image": images, "label": labels}, features=features)
    DatasetDict(train=ds, test=ds).save_to_disk(tmp_path / name)
    return str(tmp_path / name)


def test_pil_modes_are_converted_not_reinterpreted(tmp_path):
    """np.array(image) of a palette image gives palette indices, of a CMYK image four ink channels: every image
    goes through PIL's own mode conversion instead."""
    red = PILImage.new("RGB", (4, 4), (255, 0, 0))
    palette = red.convert("P", palette=PILImage.ADAPTIVE, colors=4)
    cmyk = red.convert("CMYK")
    rgba = PILImage.new("RGBA", (4, 4), (10, 200, 30, 0))
    la = PILImage.new("LA", (4, 4), (77, 128))
    path = save_images(tmp_path, "modes", [palette, cmyk, rgba, la])
    data = prepare_datasets(
        DataArguments(dataset_name=path, augmentation="none", image_mean=[0, 0, 0], image_std=[1, 1, 1]),
        channels=3,
        image_size=4,
    )
    got = [tuple((data.eval[i]["pixel_values"][:, 0, 0] * 255).round().int().tolist()) for i in range(4)]
    assert got == [(255, 0, 0), (255, 0, 0), (10, 200, 30), (77, 77, 77)]  # red stays red; alpha dropped; LA is gray
    gray = prepare_datasets(
        DataArguments(dataset_name=path, augmentation="none", image_mean=[0], image_std=[1]), channels=1, image_size=4
    )
    assert round(float(gray.eval[0]["pixel_values"][0, 0, 0]) * 255) == 76  # ITU-R 601 luma of pure red


def test_unconvertible_images_anywhere_are_refused_before_training(tmp_path):
    images = [PILImage.new("L", (4, 4), 9) for _ in range(5)] + [PILImage.new("I;16", (4, 4), 3000)]
    path = save_images(tmp_path, "deep", images)
    with pytest.raises(
        ValueError, match="(?s)'train' split has images that cannot be decoded or converted.*I;16: 1 image.s.: row 5"
    ):
        prepare_datasets(DataArguments(dataset_name=path), channels=3, image_size=4)
    grays = save_images(tmp_path, "gray", [PILImage.new("LA", (4, 4), (1, 2)) for _ in range(4)])
    assert prepare_datasets(DataArguments(dataset_name=grays), channels=None, image_size=4).channels == 1


def test_array_images_by_dtype(tmp_path):
    from datasets import Array3D

    features = Features({"image": Array3D((4, 4, 3), "int64"), "label": ClassLabel(names=["a", "b"])})
    ok = save_images(tmp_path, "ints", [np.full((4, 4, 3), 200, np.int64)] * 4, features=features)
    data = prepare_datasets(
        DataArguments(dataset_name=ok, augmentation="none", image_mean=[0] * 3, image_std=[1] * 3),
        channels=3,
        image_size=4,
    )
    assert torch.allclose(data.eval[0]["pixel_values"], torch.full((3, 4, 4), 200 / 255))
    bad = save_images(tmp_path, "big", [np.full((4, 4, 3), 999, np.int64)] * 4, features=features)
    with pytest.raises(ValueError, match="(?s)cannot be decoded or converted.*array int64 4x4x3"):
        prepare_datasets(DataArguments(dataset_name=bad), channels=3, image_size=4)
    from hf_mkcd.data import array_to_uint8

    assert array_to_uint8(np.array([[0.0, 1.0]])).tolist() == [[0, 255]]  # floats within 0..1 are scaled
    with pytest.raises(ValueError, match="shape"):
        array_to_uint8(np.zeros((4, 4, 2), np.uint8))  # two channels: gray+alpha or what? not guessed


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_outside_the_classes_are_refused_before_training(tmp_path, split):
    images = [PILImage.new("L", (4, 4), 9) for _ in range(6)]
    good, bad = [0, 1, 0, 1, 0, 1], [0, -1, 5, 1, -1, 0]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    # casting int labels to a ClassLabel keeps out-of-range values: how they reach a real dataset
    parts = {
        s: Dataset.from_dict({"image": images, "label": bad if s == split else good}).cast(features)
        for s in ("train", "test")
    }
    DatasetDict(parts).save_to_disk(tmp_path / "labels")
    with pytest.raises(
        ValueError,
        match=f"the '{split}' split has 3 label\\(s\\) outside 0..1: -1 \\(2 rows\\), "
        "5 \\(1 row\\).*-1 is the datasets convention",
    ):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path / "labels")), channels=1, image_size=4)


def test_empty_or_zero_sized_splits_are_refused(tmp_path):
    for flag in ("max_train_samples", "max_eval_samples"):
        with pytest.raises(ValueError, match=f"--{flag} must be at least 1"):
            prepare_datasets(DataArguments(dataset_name="digits", **{flag: 0}), channels=1, image_size=8)
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    train = Dataset.from_dict({"image": [PILImage.new("L", (4, 4), 9)] * 4, "label": [0, 1, 0, 1]}, features=features)
    os.makedirs(tmp_path / "empty")
    train.to_parquet(str(tmp_path / "empty" / "train-00000.parquet"))
    Dataset.from_dict({"image": [], "label": []}, features=features).to_parquet(
        str(tmp_path / "empty" / "test-00000.parquet")
    )
    with pytest.raises(ValueError, match="a split of .* is empty \\(splits: \\['test', 'train'\\]\\)"):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path / "empty")), channels=1, image_size=4)
    with pytest.raises(ValueError, match="the 'train' split of 'digits' is empty"):  # emptied by a filter, say
        from hf_mkcd import data as data_module

        original = data_module.load_digits_dataset
        try:
            data_module.load_digits_dataset = lambda seed=0: DatasetDict(
                {k: v.filter(lambda e: False) if k == "train" else v for k, v in original(seed).items()}
            )
            prepare_datasets(DataArguments(dataset_name="digits"), channels=1, image_size=8)
        finally:
            data_module.load_digits_dataset = original


def test_validation_is_held_out_of_train_and_test_is_only_reported():
    args = DataArguments(dataset_name="digits", validation_samples=300, test_split="test", max_train_samples=500)
    data = prepare_datasets(args, channels=1, image_size=8)
    assert (len(data.train), len(data.eval), len(data.test)) == (500, 300, 360)
    raw = load_image_dataset("digits")["train"]
    key = lambda img: np.asarray(img).tobytes()  # noqa: E731
    train_imgs = {key(x) for x in data.train.with_format(None)["image"]}
    eval_imgs = [key(x) for x in data.eval.with_format(None)["image"]]
    assert not train_imgs & set(eval_imgs) and len(raw) == 1437
    again = prepare_datasets(args, channels=1, image_size=8)  # fixed by split_seed
    assert [key(x) for x in again.eval.with_format(None)["image"]] == eval_imgs


def test_save_to_disk_imagefolder_and_columns(tmp_path):
    images = [PILImage.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)) for i in range(6)]
    two_labels = Features(
        {"picture": Image(), "a": ClassLabel(names=["x", "y"]), "b": ClassLabel(names=["u", "v", "w"])}
    )
    ds = Dataset.from_dict({"picture": images, "a": [0, 1] * 3, "b": [0, 1, 2] * 2}, features=two_labels)
    DatasetDict(train=ds).save_to_disk(tmp_path / "disk")
    with pytest.raises(ValueError, match="cannot tell the label column.*--label_column_name"):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path / "disk")), 3, 8)
    data = prepare_datasets(DataArguments(dataset_name=str(tmp_path / "disk"), label_column_name="b"), 3, 8)
    assert data.image_column == "picture" and data.id2label == {0: "u", 1: "v", 2: "w"}
    assert len(data.train) + len(data.eval) == 6  # no eval split: 10% of train held out
    with pytest.raises(ValueError, match="label column 'c' not in the dataset"):
        detect_columns(two_labels, label_column="c")
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / "folder" / split / cls)
            for i in range(3):
                images[i].save(tmp_path / "folder" / split / cls / f"{i}.png")
    data = prepare_datasets(DataArguments(dataset_name=str(tmp_path / "folder")), 1, 8)
    assert data.id2label == {0: "cat", 1: "dog"} and data.train[0]["pixel_values"].shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown dataset 'cifar1000'"):
        load_image_dataset("cifar1000")


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian():
    ds = load_image_dataset("fashion_mnist")
    assert (len(ds["train"]), len(ds["test"])) == (60000, 10000)
    assert ds["train"].features["label"].names[9] == "Ankle boot"
    assert np.array(ds["test"][0]["image"]).shape == (28, 28)


def test_fashion_mnist_pairs_are_the_ordered_pair_of_two_stacked_items():
    """The 100-class source: the class of each image is 10 x (top item's class) + (bottom item's), the top half is
    that item's own pixels, and the CIFAR recipe's horizontal flip keeps the class (stacked, not side by side)."""
    from hf_mkcd.data import compose_pairs, fashion_mnist_pair_names

    rng = np.random.default_rng(1)
    items = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50)
    images, pairs = compose_pairs(items, labels, seed=3)
    partner = np.random.default_rng(3).permutation(50)
    # stacked rows, not columns: a horizontal flip mirrors each item in place and never swaps top and bottom
    assert images.shape == (50, 56, 28) and np.array_equal(images[:, :28], items)
    assert np.array_equal(images[:, 28:], items[partner])  # each item is used once as top, once as bottom
    assert np.array_equal(pairs, 10 * labels + labels[partner])
    names = fashion_mnist_pair_names()
    assert len(names) == 100 and names[10 * 8 + 7] == "Bag over Sneaker"


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_pairs_from_debian():
    ds = load_image_dataset("fashion_mnist_pairs")
    fm = load_image_dataset("fashion_mnist")
    assert (len(ds["train"]), len(ds["test"])) == (60000, 10000)
    counts = np.bincount(ds["train"]["label"], minlength=100)
    assert counts.min() > 450 and counts.max() < 750  # about 600 images per class, as CIFAR-100's 500
    first = np.array(ds["test"][0]["image"])
    assert first.shape == (56, 28) and np.array_equal(first[:28], np.array(fm["test"][0]["image"]))
    assert ds["test"][0]["label"] // 10 == fm["test"][0]["label"]


@pytest.mark.parametrize("kind", ["string", "int"])
def test_plain_label_columns_are_encoded_the_same_in_every_split(tmp_path, kind):
    """A ``label`` column of strings (or plain integers) failed with "cannot tell the label column", then "is
    Value('string'), not a ClassLabel". Strings are numbered in sorted order, integers keep their ids; one
    mapping for every split, so the same class has the same id in training and evaluation."""
    from datasets import Value

    from hf_mkcd.data import load_digits_dataset

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    ds = load_digits_dataset(0)
    ds = ds.cast_column("label", Value("int64"))
    if kind == "string":
        ds = ds.map(lambda e: {"label": words[e["label"]]}).cast_column("label", Value("string"))
    ds.save_to_disk(str(tmp_path / "plain"))
    data = prepare_datasets(DataArguments(dataset_name=str(tmp_path / "plain"), augmentation="none"), 1, 8)
    names = sorted(words) if kind == "string" else [str(i) for i in range(10)]
    assert list(data.id2label.values()) == names
    for split, raw in ((data.train, ds["train"]), (data.eval, ds["test"])):
        for i in (0, 7):
            want = names.index(raw[i]["label"]) if kind == "string" else raw[i]["label"]
            assert split[i]["labels"] == want
    run_out = tmp_path / "run"
    from hf_mkcd.run import ModelArguments, run
    from hf_mkcd.trainer import DistillationTrainingArguments

    results = run(
        ModelArguments(model_name_or_path="cifar_resnet20"),
        DataArguments(dataset_name=str(tmp_path / "plain"), image_size=8, max_eval_samples=32),
        DistillationTrainingArguments(
            output_dir=str(run_out),
            method="none",
            max_steps=2,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            dataloader_num_workers=0,
            disable_tqdm=True,
        ),
    )
    assert "eval_top1" in results


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_photos_get_timms_pipeline_as_a_pure_function_of_seed_epoch_and_index():
    """Inputs from 96x96 up are photos: RandomResizedCrop + flip drawn from the sample's own generator (resume stays
    bit-exact), evaluation resizes the shorter side to size / crop_pct and centre-crops (the aspect ratio kept);
    CIFAR-sized inputs keep crop + flip."""
    import random

    from torchvision.transforms.v2 import functional as TF

    from hf_mkcd.data import ImageTransform, resolve_augmentation

    assert resolve_augmentation("auto", 32) == "crop_flip" and resolve_augmentation("auto", 96) == "random_resized_crop"
    images = [_photo(200, 120, 0), _photo(90, 160, 1)]
    train = ImageTransform(
        "image", "label", 3, 96, (0.5,) * 3, (0.25,) * 3, True, "auto", seed=3, auto_augment="rand-m9-mstd0.5"
    )
    batch = {"image": images, "label": [0, 1], "__index__": [5, 6]}
    state = random.getstate()
    first = train(dict(batch))["pixel_values"]
    assert random.getstate() == state  # RandAugment's Python RNG was seeded per sample and restored
    again = train(dict(batch))["pixel_values"]
    assert all(torch.equal(a, b) and a.shape == (3, 96, 96) for a, b in zip(first, again))
    train.set_epoch(1)
    assert not torch.equal(train(dict(batch))["pixel_values"][0], first[0])  # re-drawn each epoch
    evaluation = ImageTransform("image", "label", 3, 96, (0.5,) * 3, (0.25,) * 3, False, "auto", crop_pct=0.875)
    got = evaluation({"image": images[:1], "label": [0]})["pixel_values"][0]
    want = TF.pil_to_tensor(TF.center_crop(TF.resize(images[0], 109), [96, 96]))  # shorter side 120 -> 109 = 96/0.875
    torch.testing.assert_close(got, (want.float() / 255 - 0.5) / 0.25)


def test_normalisation_is_measured_over_photos_of_different_sizes():
    """Photos differ in size (stacking them failed): the statistics are those of all their pixels together."""
    from hf_mkcd.data import measure_stats

    images = [_photo(200, 120, 0), _photo(90, 160, 1)]
    ds = Dataset.from_dict({"image": images}, features=Features({"image": Image()}))
    mean, std = measure_stats(ds, "image", 3)
    pixels = torch.cat([torch.from_numpy(np.asarray(im)).reshape(-1, 3).double() / 255 for im in images])
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), pixels.mean(0))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), pixels.std(0))


@pytest.mark.parametrize(
    "sizes, image_size, chosen, why",
    [
        ({(60, 40): 3, (150, 100): 2}, 64, "random_resized_crop", "differ in size"),  # photos below 96 px
        ({(28, 28): 70000}, 16, "crop_flip", "small and of one size"),  # Fashion-MNIST at 16x16
        ({(28, 56): 70000}, 16, "crop_flip", "small and of one size"),  # its stacked pairs: one size, squashed
        ({(32, 32): 50000}, 32, "crop_flip", "small and of one size"),  # CIFAR
        ({(200, 200): 10}, 64, "random_resized_crop", "photo-sized and larger"),
        ({(32, 32): 10}, 224, "random_resized_crop", "photo-sized"),  # CIFAR for an ImageNet model
    ],
)
def test_the_data_decides_the_pipeline(sizes, image_size, chosen, why):
    from hf_mkcd.data import choose_pipeline

    got, reason = choose_pipeline("auto", image_size, sizes)
    assert got == chosen and why in reason
    assert choose_pipeline("crop_flip", image_size, sizes) == ("crop_flip", "--augmentation crop_flip")


def test_the_saved_processor_does_what_the_photo_evaluation_did():
    """A photo student's image processor crops as its evaluation did (shorter side to size / crop_pct, the centre),
    never squashing a wide photo: the pipeline a user runs sees what the reported accuracy saw."""
    import numpy as np
    from PIL import Image

    from hf_mkcd.data import ImageTransform
    from hf_mkcd.models import MKCDStudentConfig, MKCDStudentForImageClassification

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8))
    evaluation = ImageTransform("image", "label", 3, 64, mean, std, False, "random_resized_crop", crop_pct=0.875)
    expected = evaluation({"image": [photo], "label": [0]})["pixel_values"][0]
    student = MKCDStudentForImageClassification(
        MKCDStudentConfig(
            backbone="cifar_resnet20", id2label={0: "a"}, image_size=64, image_mean=mean, image_std=std, crop_pct=0.875
        )
    )
    got = student.image_processor()(photo, return_tensors="pt")["pixel_values"][0]
    assert got.shape == expected.shape == (3, 64, 64)
    assert (got - expected).abs().mean() < 1e-3  # the same crop and resampling (rounding apart)
    squashed = (
        torch.nn.functional.interpolate(
            torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float(), size=(64, 64), mode="bilinear"
        )[0]
        / 255
    )
    squashed = (squashed - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert (squashed - expected).abs().mean() > 10 * (got - expected).abs().mean()  # and it is not a squash
