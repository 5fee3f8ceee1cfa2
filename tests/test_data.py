"""Data: the Hub schema through a local parquet copy, offline sources, channels, columns, errors."""
import os
import time

import numpy as np
import pytest
import torch
from cifar100_schema import FEATURES, write_cifar100_parquet
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from hf_mkcd.data import (FASHION_MNIST_DIR, DataArguments, detect_columns, load_image_dataset, prepare_datasets,
                          to_channels)


def test_cifar100_hub_schema_via_local_parquet(tmp_path):
    root = write_cifar100_parquet(tmp_path)
    ds = load_image_dataset(str(root))
    assert set(ds) == {"train", "test"} and ds["train"].features == FEATURES
    data = prepare_datasets(DataArguments(dataset_name=str(root)), channels=3, image_size=32,
                            mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))
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
    with pytest.raises(ConnectionError, match="Offline choices: fashion_mnist, digits"):
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


def test_two_channel_images_are_refused_before_training(tmp_path):
    la = [PILImage.fromarray(np.zeros((8, 8, 2), dtype=np.uint8), mode="LA") for _ in range(4)]
    ds = Dataset.from_dict({"image": la, "label": [0, 1, 0, 1]},
                           features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}))
    DatasetDict(train=ds, test=ds).save_to_disk(tmp_path / "la")
    with pytest.raises(ValueError, match="2 channels and the model takes 3"):
        prepare_datasets(DataArguments(dataset_name=str(tmp_path / "la")), channels=3, image_size=8)


def test_save_to_disk_imagefolder_and_columns(tmp_path):
    images = [PILImage.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)) for i in range(6)]
    two_labels = Features({"picture": Image(), "a": ClassLabel(names=["x", "y"]), "b": ClassLabel(names=["u", "v", "w"])})
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
