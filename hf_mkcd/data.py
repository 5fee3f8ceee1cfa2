"""Image-classification data through ``datasets``: Hub ids, local copies, and offline sources.

``--dataset_name`` may be
* a Hub id (default ``uoft-cs/cifar100``): fails at once when offline, naming the offline choices;
* a local ``save_to_disk`` directory, a parquet file / directory (``train-*.parquet``, ``test-*.parquet``),
  or an imagefolder directory;
* ``fashion_mnist`` (Debian's ``/usr/share/datasets/fashion-mnist`` when installed, else the Hub copy),
  ``fashion_mnist_pairs`` (100 classes built from it: each image two items stacked, the class the ordered pair;
  :func:`load_fashion_mnist_pairs`) or ``digits`` (scikit-learn's bundled 8x8 digits, split 80/20 with a fixed seed).

The image and label columns are detected (an ``Image`` feature; a ``ClassLabel`` named ``label`` /
``fine_label`` / ``labels``, else the only one), or given with ``--image_column_name`` /
``--label_column_name``. Transforms run on the fly through ``set_transform`` (augmentation re-drawn
every epoch), converting images to the channel count the model expects.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk
from PIL import Image as PILImage

from .augment import VIEWS, crop_flip, sample_seed
from .models.helpers import fit_channels

logger = logging.getLogger("hf_mkcd")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
OFFLINE_SOURCES = ("fashion_mnist", "fashion_mnist_pairs", "digits")
# per-dataset normalisation (mean, std) of the known sources; others are measured on training images
KNOWN_STATS = {
    "uoft-cs/cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


@dataclass
class DataArguments:
    """Which data to train and evaluate on, and how to present it to the models."""

    dataset_name: str = field(
        default="uoft-cs/cifar100", metadata={"help": "Hub id, local path, or one of: " + ", ".join(OFFLINE_SOURCES)}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    image_column_name: Optional[str] = field(default=None, metadata={"help": "Image column (detected if unset)."})
    label_column_name: Optional[str] = field(default=None, metadata={"help": "Label column (detected if unset)."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: Optional[str] = field(
        default=None, metadata={"help": "Evaluation split (validation, else test, else a seeded tenth of train)."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the training set (debugging, quick runs)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Model input size (default: the teacher's / the model's)."}
    )
    augmentation: str = field(
        default="auto",
        metadata={
            "help": "Training augmentation: crop_flip (the CIFAR recipe: random crop with 4-pixel padding + flip), "
            "random_resized_crop (timm's for photos: RandomResizedCrop + flip; evaluation resizes and centre-crops at "
            "the teacher's crop_pct), none, or auto (the default: crop_flip below 96x96 inputs, random_resized_crop "
            "from 96x96). Extra views a method reads (MLKD's strong view) are added because the method asks for them."
        },
    )
    auto_augment: Optional[str] = field(
        default=None,
        metadata={
            "help": "timm's RandAugment string for photos, e.g. rand-m9-mstd0.5-inc1 (random_resized_crop only)."
        },
    )
    image_mean: Optional[List[float]] = field(
        default=None,
        metadata={"help": "Normalisation mean, one value per channel (default: known stats, else measured)."},
    )
    image_std: Optional[List[float]] = field(
        default=None, metadata={"help": "Normalisation std, one value per channel (e.g. --image_std 0.25 0.25 0.25)."}
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "Seed of derived splits and subsets (digits, train/eval split, max_train_samples)."},
    )
    validation_samples: Optional[int] = field(
        default=None,
        metadata={
            "help": "Hold out this many training images (fixed by split_seed) as the evaluation set, for model "
            "selection that never reads the test split; max_train_samples then draws from the rest."
        },
    )
    test_split: Optional[str] = field(
        default=None,
        metadata={
            "help": "A split evaluated once, after training, and only reported (test_* metrics): with "
            "validation_samples, the final numbers."
        },
    )


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _from_arrays(images: np.ndarray, labels: np.ndarray, names) -> Dataset:
    features = Features({"image": Image(), "label": ClassLabel(names=list(names))})
    return Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64)}, features=features)


def _cached_on_disk(name: str, build) -> DatasetDict:
    """``build()`` encoded once into the datasets cache, then read back from disk (atomic: a concurrent or
    interrupted run never sees half a cache)."""
    import datasets

    cache = os.path.join(datasets.config.HF_DATASETS_CACHE, "hf_mkcd", name)
    if not os.path.isfile(os.path.join(cache, "dataset_dict.json")):
        tmp = f"{cache}.tmp{os.getpid()}"
        build().save_to_disk(tmp)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            pass  # another process won the race; its copy is identical
    return load_from_disk(cache)


def _fashion_mnist_arrays() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Debian's Fashion-MNIST as ``{split: (uint8 images N x 28 x 28, labels N)}``."""
    out = {}
    for name, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"))
        labels = _read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
        out[name] = (images, labels)
    return out


def load_fashion_mnist() -> DatasetDict:
    """Debian's copy, encoded once into the datasets cache (16 s), then read back from disk."""
    if os.path.isdir(FASHION_MNIST_DIR):
        return _cached_on_disk(
            "fashion_mnist_debian",
            lambda: DatasetDict(
                {k: _from_arrays(x, y, FASHION_MNIST_LABELS) for k, (x, y) in _fashion_mnist_arrays().items()}
            ),
        )
    return _load_hub("zalando-datasets/fashion_mnist", None)


PAIRS_SEED = 0


def fashion_mnist_pair_names() -> list:
    return [f"{top} over {bottom}" for top in FASHION_MNIST_LABELS for bottom in FASHION_MNIST_LABELS]


def compose_pairs(images: np.ndarray, labels: np.ndarray, seed: int = PAIRS_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Each item on top of a partner drawn without replacement from the same split: (N, 56, 28) images, class
    ``10 * top + bottom``. Stacked, not side by side, so the horizontal flip of the CIFAR recipe keeps the class."""
    partner = np.random.default_rng(seed).permutation(len(images))
    return np.concatenate([images, images[partner]], axis=1), 10 * labels.astype(np.int64) + labels[partner]


def load_fashion_mnist_pairs() -> DatasetDict:
    """A 100-class data set from Fashion-MNIST's 70,000 real images, for a benchmark with CIFAR-100's class count
    and about its images per class (600 train, 100 test): each image is two items stacked, the class the ordered
    pair (``"Bag over Sneaker"``). A teacher's soft labels then carry what KD is made for: classes that share an
    item are alike. Built once (seeded) into the datasets cache."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        raise FileNotFoundError(
            f"fashion_mnist_pairs is built from Debian's Fashion-MNIST, not found at {FASHION_MNIST_DIR}: "
            "apt-get install dataset-fashion-mnist"
        )
    names = fashion_mnist_pair_names()
    return _cached_on_disk(
        f"fashion_mnist_pairs_seed{PAIRS_SEED}",
        lambda: DatasetDict(
            {k: _from_arrays(*compose_pairs(x, y), names) for k, (x, y) in _fashion_mnist_arrays().items()}
        ),
    )


def load_digits_dataset(seed: int = 0) -> DatasetDict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    ds = _from_arrays(images, digits.target, [str(i) for i in range(10)])
    split = ds.train_test_split(test_size=0.2, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], test=split["test"])


def _load_hub(name: str, config: Optional[str]) -> DatasetDict:
    """A Hub dataset; when the Hub cannot be reached, the local cache at once, else a clear error."""
    from .hub import hub_reachable, offline_mode, unreachable_reason

    offline_choices = (
        f"Offline choices: {', '.join(OFFLINE_SOURCES)}, or a local path (save_to_disk directory, "
        "parquet files, imagefolder)."
    )
    if hub_reachable():
        try:
            return load_dataset(name, config)
        except ConnectionError as err:
            raise ConnectionError(
                f"dataset {name!r} cannot be fetched from the Hugging Face Hub. {offline_choices} ({err})"
            ) from err
    try:
        with offline_mode():
            ds = load_dataset(name, config)
        logger.warning(f"the Hub cannot be reached ({unreachable_reason()}): using the cached copy of {name!r}")
        return ds
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise ConnectionError(
            f"dataset {name!r} is not in the local cache and the Hugging Face Hub cannot be reached "
            f"({unreachable_reason()}). {offline_choices}"
        ) from err


def looks_like_path(name: str) -> bool:
    """A name that can only be a path (absolute, ./ ../ ~, or more than one '/'), never a Hub id (org/name)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name in (".", "..")


def load_image_dataset(name: str, config: Optional[str] = None, seed: int = 0) -> DatasetDict:
    if looks_like_path(name) and not os.path.exists(os.path.expanduser(name)):
        parent = os.path.dirname(os.path.abspath(os.path.expanduser(name)))
        raise FileNotFoundError(
            f"dataset {name!r} does not exist"
            + (f" ({parent} does not exist either)" if not os.path.isdir(parent) else "")
            + ": give an existing folder (save_to_disk, parquet or imagefolder), a Hub id (org/name), or one of "
            + ", ".join(OFFLINE_SOURCES)
        )
    name = os.path.expanduser(name)
    if name == "fashion_mnist":
        return load_fashion_mnist()
    if name == "fashion_mnist_pairs":
        return load_fashion_mnist_pairs()
    if name == "digits":
        return load_digits_dataset(seed)
    if os.path.exists(name):
        if os.path.isdir(name) and (
            os.path.isfile(os.path.join(name, "dataset_dict.json"))
            or os.path.isfile(os.path.join(name, "dataset_info.json"))
        ):
            ds = load_from_disk(name)
            return ds if isinstance(ds, DatasetDict) else DatasetDict(train=ds)
        parquet = sorted(
            f for f in (os.listdir(name) if os.path.isdir(name) else [os.path.basename(name)]) if f.endswith(".parquet")
        )
        if parquet:
            root = name if os.path.isdir(name) else os.path.dirname(name)
            files = {}
            for f in parquet:
                split = f.split("-")[0].split(".")[0]
                files.setdefault(split, []).append(os.path.join(root, f))
            try:
                return load_dataset("parquet", data_files=files)
            except ValueError as err:
                if "corresponds to no data" in str(err):  # datasets' words for an empty split
                    raise ValueError(f"a split of {name!r} is empty (splits: {sorted(files)}): {err}") from err
                raise
        if os.path.isdir(name):
            return load_dataset("imagefolder", data_dir=name)
        raise ValueError(f"{name!r} is neither a dataset directory, a parquet file nor an imagefolder")
    if "/" not in name:
        raise ValueError(
            f"unknown dataset {name!r}: give a Hub id (org/name), a local path, or one of {OFFLINE_SOURCES}"
        )
    return _load_hub(name, config)


LABEL_NAMES = ("label", "labels", "fine_label")  # label columns recognised by name, in this order


def _as_pil(image, channels: int):
    if isinstance(image, PILImage.Image):
        return image.convert("L" if channels == 1 else "RGB")
    return PILImage.fromarray(image_to_tensor(image, channels).permute(1, 2, 0).squeeze(-1).numpy())


def _rand_augment(config: str, mean):
    """timm's RandAugment (e.g. ``rand-m9-mstd0.5-inc1``), filling with the mean colour, as timm's transforms do."""
    from timm.data.auto_augment import rand_augment_transform

    fill = tuple(int(round(255 * m)) for m in (list(mean) * 3 if len(mean) == 1 else mean))
    return rand_augment_transform(config, {"translate_const": 100, "img_mean": fill})


def _with_seeded_rngs(generator: torch.Generator, fn):
    """Run ``fn`` with Python's and NumPy's global RNGs seeded from ``generator``; their states are restored."""
    import random

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        return fn()
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def encode_label_column(ds: DatasetDict, train_split: str, label_column: Optional[str] = None) -> DatasetDict:
    """A label column of plain integers or strings becomes a ``ClassLabel``, the same in every split: integers
    0..K-1 keep their ids (named "0".."K-1"), strings are numbered in sorted order (as ``class_encode_column``
    does), said in the log. A ``ClassLabel`` column is left as it is."""
    features = ds[train_split].features
    if label_column is None:
        if any(isinstance(v, ClassLabel) for v in features.values()):
            return ds
        label_column = next((k for k in LABEL_NAMES if k in features), None)
    if label_column is None or label_column not in features or isinstance(features[label_column], ClassLabel):
        return ds
    dtype = getattr(features[label_column], "dtype", None)
    if dtype not in ("string", "large_string") and not str(dtype).startswith(("int", "uint")):
        return ds  # not a label: detect_columns says what it needs
    values = sorted({v for split in ds.values() for v in split.unique(label_column) if v is not None})
    if all(isinstance(v, int) for v in values):
        if values and (values[0] < 0 or values[-1] >= 10_000):
            raise ValueError(f"label column {label_column!r} holds integers {values[0]}..{values[-1]}: not class ids")
        names = [str(i) for i in range(values[-1] + 1)] if values else []
        how = f"integers 0..{len(names) - 1} kept as class ids"
        to_id = None
    else:
        names = [str(v) for v in values]
        how = f"{len(names)} names numbered in sorted order ({', '.join(names[:4])}{' ...' if len(names) > 4 else ''})"
        to_id = {n: i for i, n in enumerate(names)}
    label = ClassLabel(names=names)
    out = {}
    for split_name, split in ds.items():
        if to_id is not None:
            split = split.map(
                lambda batch: {label_column: [to_id[str(v)] for v in batch[label_column]]},
                batched=True,
                desc=f"encoding {label_column!r}",
            )
        out[split_name] = split.cast_column(label_column, label)
    logger.info(f"label column {label_column!r} ({dtype}) encoded as a ClassLabel: {how}")
    return DatasetDict(out)


def detect_columns(
    features: Features, image_column: Optional[str] = None, label_column: Optional[str] = None
) -> Tuple[str, str]:
    if image_column is None:
        images = [k for k, v in features.items() if isinstance(v, Image)]
        images = images or [k for k in ("img", "image", "pixel_values") if k in features]
        if not images:
            raise ValueError(f"no image column found in {list(features)}: pass --image_column_name")
        image_column = images[0]
    if label_column is None:
        labels = [k for k, v in features.items() if isinstance(v, ClassLabel)]
        preferred = [k for k in LABEL_NAMES if k in labels]
        if preferred:
            label_column = preferred[0]
        elif len(labels) == 1:
            label_column = labels[0]
        else:
            raise ValueError(f"cannot tell the label column among {labels or list(features)}: pass --label_column_name")
    for kind, col in (("image", image_column), ("label", label_column)):
        if col not in features:
            raise ValueError(f"{kind} column {col!r} not in the dataset; columns: {list(features)}")
    if not isinstance(features[label_column], ClassLabel):
        raise ValueError(f"label column {label_column!r} is {features[label_column]}, not a ClassLabel")
    return image_column, label_column


# PIL modes without a faithful 8-bit conversion (PIL's convert clips them): refused, with what to do
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
GRAY_MODES = ("1", "L", "LA", "La")


def image_to_tensor(image, channels: int) -> torch.Tensor:
    """A PIL image or an (H, W[, C]) array -> uint8 (channels, H, W).

    PIL images go through PIL's own mode conversion to ``L`` or ``RGB``, as torchvision's loader does:
    palette images through their palette, CMYK / YCbCr / LAB / HSV to RGB, alpha dropped, RGB to gray
    with ITU-R 601 luma. Arrays must be uint8 (or bool, other integers within 0..255, floats within
    0..1 or 0..255) with 1, 3 or 4 channels last.
    """
    if isinstance(image, PILImage.Image):
        if image.mode in HIGH_DEPTH_MODES:
            raise ValueError(
                f"a {image.mode!r} image (16-bit or float pixels) has no faithful 8-bit conversion: "
                "convert the dataset's images to 8-bit (L or RGB) first"
            )
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # PIL converts a palette with transparency through RGBA
        array = np.array(image.convert("L" if channels == 1 else "RGB"))
        return torch.from_numpy(array[:, :, None] if array.ndim == 2 else array).permute(2, 0, 1).contiguous()
    x = torch.from_numpy(np.ascontiguousarray(array_to_uint8(np.asarray(image))))
    return to_channels((x[:, :, None] if x.ndim == 2 else x).permute(2, 0, 1), channels)


def array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, C) with C in 1, 3, 4; got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"integer image values must lie in 0..255, got {array.min()}..{array.max()}")
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
            raise ValueError("float image values must be finite, within 0..1 or 0..255")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        return np.round(array * scale).astype(np.uint8)
    raise ValueError(f"image arrays of dtype {array.dtype} are not understood: use uint8")


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 CxHxW with C in {1, 3, 4} -> ``channels`` channels (RGBA drops alpha; gray <-> RGB, ITU-R 601 luma)."""
    c = x.shape[0]
    if c == 4:
        x, c = x[:3], 3
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x.float() * w).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"images have {c} channels and the model takes {channels}: no conversion is defined")


def scan_images(dataset: Dataset, image_column: str, split: str, sizes: Optional[Dict[tuple, int]] = None):
    """Every image's kind, read before training (PIL headers only, no decoding): ``{mode: count}``; ``sizes``, when
    given, is filled with ``{(width, height): count}`` (what decides the photo pipeline).
    Raises, naming the split, the first bad row and how many there are, for images nothing can convert."""
    feature = dataset.features[image_column]
    counts: Dict[str, int] = {}
    bad: Dict[str, list] = {}
    sizes = {} if sizes is None else sizes
    if isinstance(feature, Image):
        from tqdm.auto import tqdm

        raw = dataset.cast_column(image_column, Image(decode=False))
        budget = DECODE_BUDGET_PIXELS
        progress = tqdm(total=len(raw), desc=f"checking the {split!r} images", disable=len(raw) < 20_000)
        for start in range(0, len(raw), 1000):
            for offset, item in enumerate(raw[start : start + 1000][image_column]):
                where = item.get("path") or None
                try:
                    source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
                    with PILImage.open(source) as im:
                        mode = im.mode
                        sizes[im.size] = sizes.get(im.size, 0) + 1
                        if budget > 0:  # decoded whole, as training will: a truncated file fails here, named
                            budget -= im.size[0] * im.size[1]
                            im.load()
                except Exception as err:  # unreadable or truncated bytes, a missing file
                    mode = f"unreadable ({type(err).__name__}: {str(err)[:80]})"
                counts[mode] = counts.get(mode, 0) + 1
                if mode in HIGH_DEPTH_MODES or mode.startswith("unreadable"):
                    bad.setdefault(mode, []).append((start + offset, where))
            progress.update(min(1000, len(raw) - start))
        progress.close()
        if budget <= 0:
            logger.info(
                f"the {split!r} split's first {DECODE_BUDGET_PIXELS / 1e9:g} gigapixels were decoded whole; the rest "
                "were checked by their headers (a file corrupt past its header fails when training reads it)"
            )
    else:  # arrays: dtype and shape from a sample of rows (the feature type fixes them for the rest)
        for i in sorted({0, len(dataset) // 2, len(dataset) - 1}):
            array = np.asarray(dataset[i][image_column])
            kind = f"array {array.dtype} {'x'.join(map(str, array.shape))}"
            if array.ndim >= 2:
                hw = array.shape[:2] if array.ndim == 2 or array.shape[-1] in (1, 3, 4) else array.shape[-2:]
                sizes[(hw[1], hw[0])] = sizes.get((hw[1], hw[0]), 0) + 1
            try:
                array_to_uint8(array)
            except ValueError:
                bad.setdefault(kind, []).append((i, None))
            counts[kind] = counts.get(kind, 0) + 1
    if bad:
        lines = []
        for kind, rows in bad.items():
            shown = ", ".join(f"row {r}" + (f" ({p})" if p else "") for r, p in rows[:5])
            lines.append(f"{kind}: {len(rows)} image(s): {shown}" + (" ..." if len(rows) > 5 else ""))
        raise ValueError(
            f"the {split!r} split has images that cannot be decoded or converted to 8-bit L/RGB:\n  "
            + "\n  ".join(lines)
            + "\nRe-encode or remove those files (or drop the rows, e.g. dataset.filter) before training."
        )
    return counts


def source_channels_of(modes: Dict[str, int]) -> int:
    """1 when every image is grayscale, else 3 (colour, palette, CMYK, ...)."""
    gray = all(m in GRAY_MODES or (m.startswith("array") and (m.count("x") == 1 or m.endswith("x1"))) for m in modes)
    return 1 if gray else 3


def check_labels(dataset: Dataset, label_column: str, num_classes: int, split: str) -> np.ndarray:
    """Every label in 0..num_classes-1 (-1 is the datasets convention for "no label"): read before training.
    Returns the number of images of each class."""
    labels = np.asarray(dataset.with_format(None)[label_column])
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        values, counts = np.unique(labels[bad], return_counts=True)
        shown = ", ".join(f"{v} ({c} row{'s' if c > 1 else ''})" for v, c in zip(values[:8], counts[:8]))
        hint = " -1 is the datasets convention for an unlabelled row: drop those rows." if (values == -1).any() else ""
        raise ValueError(
            f"the {split!r} split has {int(bad.sum())} label(s) outside 0..{num_classes - 1}: {shown}.{hint}"
        )
    return np.bincount(labels, minlength=num_classes)


def classes_missing(counts: Dict[str, np.ndarray], names: Sequence[str]) -> List[str]:
    """Each class with no images in a split (``counts``: each split's images per class, the training split first)
    while another split has some (an empty class folder, a class only in the test split), named with its counts:
    said before training, where the student could never learn it."""
    first = next(iter(counts))

    def describe(i: int) -> str:
        found = [f"{int(c[i])} in {name!r}" for name, c in counts.items() if c[i]]
        return f"{names[i]!r}" + (f" ({', '.join(found)})" if found else "")

    lines = []
    for split_name, per_class in counts.items():
        empty = [i for i in np.flatnonzero(per_class == 0) if any(c[i] for c in counts.values())]
        never = [i for i in np.flatnonzero(per_class == 0) if not any(c[i] for c in counts.values())]
        never = never if split_name == first else []  # said once
        for group, what in ((empty, "no images in"), (never, "no images in any split, including")):
            if group:
                shown = ", ".join(describe(i) for i in group[:8])
                lines.append(
                    f"{len(group)} class(es) with {what} the {split_name!r} split: {shown}"
                    + (" ..." if len(group) > 8 else "")
                    + (
                        ": the student never sees them in training; add images, or drop the class (its folder)"
                        if split_name == first
                        else ": they are never evaluated"
                    )
                )
    return lines


def measure_stats(dataset: Dataset, image_column: str, channels: int, n: int = 2000, seed: int = 0):
    """Per-channel mean and standard deviation over every pixel of up to ``n`` images (any sizes: photos differ)."""
    idx = np.random.default_rng(seed).choice(len(dataset), size=min(n, len(dataset)), replace=False)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    for i in idx:
        x = image_to_tensor(dataset[int(i)][image_column], channels).double().flatten(1) / 255
        total += x.sum(1)
        squares += (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(0).mul(pixels / max(pixels - 1, 1)).sqrt()  # unbiased, as before
    return mean.tolist(), std.tolist()


def given_stats(mean, std, channels: int):
    """``--image_mean`` / ``--image_std`` as the model's channels take them: both given, one value per channel, or
    one value for every channel; a standard deviation above zero."""
    if mean is None or std is None:
        raise ValueError("give both --image_mean and --image_std (one value per channel, or one for all), or neither")
    out = []
    for name, values in (("--image_mean", mean), ("--image_std", std)):
        values = [float(v) for v in values]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ValueError(
                f"{name} has {len(values)} values; the model takes {channels} channel(s): give {channels} or 1"
            )
        out.append(values)
    if min(out[1]) <= 0:
        raise ValueError(f"--image_std must be above zero, got {out[1]}")
    return out[0], out[1]


INDEX_COLUMN = "__index__"
AUGMENTATIONS = ("auto", "crop_flip", "random_resized_crop", "none")
DECODE_BUDGET_PIXELS = 2e9  # images decoded whole before training, per split (about 20 s); past it, headers only
PHOTO_SIZE = 96  # inputs at least this large are photos: timm's transforms; smaller ones are CIFAR-sized
DEFAULT_CROP_PCT = 0.875  # timm's default evaluation crop (resize to size / 0.875, centre crop)


def resolve_augmentation(augmentation: str, image_size: int) -> str:
    """``auto`` without a look at the data: photo-sized inputs get timm's RandomResizedCrop + flip (and resize +
    centre crop for evaluation), smaller ones the CIFAR recipe's crop + flip (:func:`choose_pipeline` looks)."""
    return choose_pipeline(augmentation, image_size)[0]


def choose_pipeline(augmentation: str, image_size: int, sizes: Optional[Dict[tuple, int]] = None) -> Tuple[str, str]:
    """``(augmentation, why)``: ``auto`` follows the data. Photos — inputs of at least 96 px, images of mixed sizes or
    aspect ratios, or images of at least 96 px larger than the input — get timm's pipeline at any input size
    (RandomResizedCrop in training, the shorter side resized and the centre cropped at ``crop_pct`` in evaluation:
    never squashed); small images of one size (CIFAR, Fashion-MNIST and its stacked pairs) keep the CIFAR recipe
    (resized whole, 4-pixel padded crop + flip)."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augmentation!r}: one of {AUGMENTATIONS}")
    if augmentation != "auto":
        return augmentation, "--augmentation " + augmentation
    photo, crop = "random_resized_crop", "crop_flip"
    if image_size >= PHOTO_SIZE:
        return photo, f"auto: a {image_size}x{image_size} input is photo-sized (at least {PHOTO_SIZE} px)"
    if not sizes:
        return crop, f"auto: a {image_size}x{image_size} input is CIFAR-sized"
    shown = sorted(sizes, key=lambda wh: -sizes[wh])
    if len(sizes) > 1:
        small, large = min(sizes, key=lambda wh: wh[0] * wh[1]), max(sizes, key=lambda wh: wh[0] * wh[1])
        return photo, (
            f"auto: the images differ in size ({len(sizes)} sizes, {small[0]}x{small[1]} to {large[0]}x{large[1]}): "
            "photos, cropped rather than squashed"
        )
    w, h = shown[0]
    if min(w, h) >= PHOTO_SIZE and max(w, h) > image_size:
        return photo, f"auto: the images are {w}x{h}, photo-sized and larger than the {image_size}x{image_size} input"
    return crop, f"auto: every image is {w}x{h}, small and of one size: the CIFAR recipe at {image_size}x{image_size}"


def random_resized_crop_params(h: int, w: int, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params``, drawn from ``generator``: (top, left, height, width)."""
    area = h * w
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        cw, ch = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            i = torch.randint(0, h - ch + 1, (1,), generator=generator).item()
            j = torch.randint(0, w - cw + 1, (1,), generator=generator).item()
            return i, j, ch, cw
    in_ratio = w / h  # fallback: the central crop of the closest ratio
    cw, ch = (
        (w, int(round(w / min(ratio))))
        if in_ratio < min(ratio)
        else ((int(round(h * max(ratio))), h) if in_ratio > max(ratio) else (w, h))
    )
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class ImageTransform:
    """``set_transform`` callable: image -> normalised tensor at the model's size and channel count.

    Training augmentation is a pure function of (seed, epoch, sample index): each sample draws from
    its own seeded RNG, so a resumed run, any ``dataloader_num_workers`` and any world size see
    exactly the same crops and flips (the global RNG is untouched). The trainer calls
    :meth:`set_epoch` at each epoch start. ``views`` names extra augmented views a method reads
    (``hf_mkcd.augment.VIEWS``); each comes out as ``pixel_values_<view>``. Each training sample also
    carries ``aug_epoch``, the epoch its augmentation was drawn for (the teacher cache's key).
    """

    def __init__(
        self,
        image_column: str,
        label_column: str,
        channels: int,
        image_size: int,
        mean,
        std,
        train: bool,
        augmentation: str = "crop_flip",
        seed: int = 0,
        views: Sequence[str] = (),
        crop_pct: float = DEFAULT_CROP_PCT,
        auto_augment: Optional[str] = None,
    ):
        from torchvision.transforms import v2

        augmentation = resolve_augmentation(augmentation, image_size)
        unknown = set(views) - set(VIEWS)
        if unknown:
            raise ValueError(f"unknown view(s) {sorted(unknown)}: the pipeline makes {sorted(VIEWS)}")
        self.photo = augmentation == "random_resized_crop"  # timm's pipeline, evaluation included
        if self.photo and views and train:
            raise ValueError(
                f"the extra view(s) {list(views)} are defined on CIFAR-sized images (crop_flip); this "
                f"method cannot run with --augmentation {augmentation} at {image_size}x{image_size}"
            )
        if auto_augment and not self.photo:
            raise ValueError(
                "--auto_augment (timm's RandAugment string) applies to the photo pipeline: use "
                "--augmentation random_resized_crop"
            )
        self.image_column, self.label_column, self.channels = image_column, label_column, channels
        self.seed, self.epoch, self.train = seed, 0, train
        self.mode = augmentation
        self.augment = train and augmentation in ("crop_flip", "random_resized_crop")
        self.views = tuple(views) if train else ()
        self.image_size, self.crop_pct = image_size, crop_pct
        self.auto_augment = _rand_augment(auto_augment, mean) if (auto_augment and train) else None
        self.resize = v2.Resize((image_size, image_size), antialias=True)
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def resized_uint8(self, image) -> torch.Tensor:
        """The image as the model takes it before any augmentation: uint8 (C, H, W) at the model's size."""
        return self.resize(image_to_tensor(image, self.channels))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def describe(self) -> dict:
        """What the produced tensors depend on, besides the epoch and the sample (the teacher cache's key)."""
        return {
            "image_column": self.image_column,
            "label_column": self.label_column,
            "channels": self.channels,
            "image_size": list(self.resize.size),
            "mean": [round(float(m), 6) for m in self.normalize.transforms[1].mean],
            "std": [round(float(v), 6) for v in self.normalize.transforms[1].std],
            "augmentation": self.augment,
            **(
                {"pipeline": self.mode, "crop_pct": self.crop_pct, "auto_augment": repr(self.auto_augment)}
                if self.photo
                else {}
            ),
            "views": list(self.views),
            "seed": self.seed,
        }

    def _photo(self, image, generator: Optional[torch.Generator]) -> torch.Tensor:
        """timm's pipeline, drawn from the sample's own generator: RandomResizedCrop (+ RandAugment) + flip in
        training; resize to size / crop_pct and a centre crop in evaluation (the aspect ratio is kept)."""
        from torchvision.transforms.v2 import functional as TF

        s = self.image_size
        img = _as_pil(image, self.channels)  # PIL's resampling, as timm's and torchvision's photo transforms use
        if generator is None:
            img = TF.center_crop(TF.resize(img, int(s / self.crop_pct)), [s, s])  # the shorter side, then the centre
            return image_to_tensor(img, self.channels)
        if self.auto_augment is not None:  # timm draws from Python's and NumPy's RNGs: seeded here, then restored
            img = _with_seeded_rngs(generator, lambda: self.auto_augment(img))
        i, j, h, w = random_resized_crop_params(img.height, img.width, generator)
        img = img.resize((s, s), PILImage.BILINEAR, box=(j, i, j + w, i + h))  # crop and resize in one pass
        if torch.rand(1, generator=generator).item() < 0.5:
            img = img.transpose(PILImage.FLIP_LEFT_RIGHT)
        return image_to_tensor(img, self.channels)

    def __call__(self, batch):
        indices = batch.get(INDEX_COLUMN) or [None] * len(batch[self.image_column])
        pixels, views = [], {v: [] for v in self.views}
        generator = torch.Generator()
        for image, index in zip(batch[self.image_column], indices):
            if self.augment or self.views:  # each sample draws from its own generator
                if index is None:  # no index column (a dataset prepared elsewhere): fall back to fresh randomness
                    generator.seed()
                else:
                    generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            if self.photo:
                pixels.append(self.normalize(self._photo(image, generator if self.augment else None)))
                continue
            x = self.resize(image_to_tensor(image, self.channels))
            if self.augment or self.views:
                for view in self.views:
                    views[view].append(self.normalize(VIEWS[view](x, generator)))
                if self.augment:  # crop_flip
                    x = crop_flip(x, generator)
            pixels.append(self.normalize(x))
        out = {"pixel_values": pixels, "labels": batch[self.label_column]}
        for view, values in views.items():
            out[f"pixel_values_{view}"] = values
        if INDEX_COLUMN in batch:
            out["index"] = batch[INDEX_COLUMN]  # the sample's position in the training set (CRD's memory bank)
            if self.train:
                out["aug_epoch"] = [self.epoch] * len(pixels)
        return out


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset
    id2label: dict
    image_column: str
    label_column: str
    source_channels: int
    channels: int
    mean: Sequence[float]
    std: Sequence[float]
    test: Optional[Dataset] = None  # reported only (DataArguments.test_split)
    eval_split: str = "validation"  # the evaluation set's short name (model-index ``split``)
    eval_description: str = ""  # what the evaluation set is, for cards: a split, or images held out of training
    pipeline: str = ""  # the augmentation and evaluation transforms, and why (said in the run plan)
    crop_pct: Optional[float] = None  # the evaluation crop of the photo pipeline (None: the images are resized whole)
    missing_classes: List[str] = field(default_factory=list)  # classes without images in a split, named
    modes: Dict[str, int] = field(default_factory=dict)  # the training images' modes and their counts


def prepare_datasets(
    args: DataArguments,
    channels: Optional[int],
    image_size: int,
    mean=None,
    std=None,
    views: Sequence[str] = (),
    crop_pct: Optional[float] = None,
) -> PreparedData:
    """Load, split, truncate and attach transforms. ``channels=None``: the images' own (RGBA -> RGB).
    ``views``: extra augmented training views the method reads (``Distiller.views``).
    ``mean``/``std`` (e.g. the teacher's) win over known or measured statistics;
    ``args.image_mean``/``image_std`` win over everything."""
    ds = load_image_dataset(args.dataset_name, args.dataset_config_name, args.split_seed)
    if args.train_split not in ds:
        raise ValueError(f"no split {args.train_split!r} in {args.dataset_name!r}; splits: {list(ds)}")
    ds = encode_label_column(ds, args.train_split, args.label_column_name)
    train = ds[args.train_split]
    eval_split = args.eval_split or next((s for s in ("validation", "test") if s in ds), None)
    test = None
    if args.test_split is not None:
        if args.test_split not in ds:
            raise ValueError(f"no split {args.test_split!r} in {args.dataset_name!r}; splits: {list(ds)}")
        test = ds[args.test_split]
    if args.validation_samples is not None:
        if not 0 < args.validation_samples < len(train):
            raise ValueError(
                f"--validation_samples must be between 1 and {len(train) - 1}, got {args.validation_samples}"
            )
        split = train.train_test_split(test_size=args.validation_samples, seed=args.split_seed)
        train, evaluation, eval_split = split["train"], split["test"], "validation"
        eval_description = (
            f"{args.validation_samples:,} images held out of the {args.train_split!r} split (seed {args.split_seed}), "
            "never trained on"
        )
    elif eval_split is None:
        split = train.train_test_split(test_size=0.1, seed=args.split_seed)
        train, evaluation, eval_split = split["train"], split["test"], "held-out"
        eval_description = (
            f"a tenth of the {args.train_split!r} split held out (seed {args.split_seed}; the dataset has no "
            "validation or test split), never trained on"
        )
    elif eval_split not in ds:
        raise ValueError(f"no split {eval_split!r} in {args.dataset_name!r}; splits: {list(ds)}")
    else:
        evaluation = ds[eval_split]
        eval_description = f"the {eval_split!r} split"
    image_column, label_column = detect_columns(train.features, args.image_column_name, args.label_column_name)
    for name, value in (("max_train_samples", args.max_train_samples), ("max_eval_samples", args.max_eval_samples)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1 (leave it unset to use the whole split), got {value}")
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.split_seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    num_classes = train.features[label_column].num_classes
    checked = [(args.train_split, train), (eval_split, evaluation)] + ([(args.test_split, test)] if test else [])
    per_class: Dict[str, np.ndarray] = {}
    for split_name, split_data in checked:
        if len(split_data) == 0:
            raise ValueError(f"the {split_name!r} split of {args.dataset_name!r} is empty")
        per_class[split_name] = check_labels(split_data, label_column, num_classes, split_name)
    missing = classes_missing(per_class, train.features[label_column].names)
    for line in missing:
        logger.warning(f"data: {line}")
    sizes: Dict[tuple, int] = {}
    modes = scan_images(train, image_column, args.train_split, sizes)
    for split_name, split_data in checked[1:]:
        scan_images(split_data, image_column, split_name)
    source_channels = source_channels_of(modes)
    if channels is None:
        channels = source_channels
    if args.image_mean is not None or args.image_std is not None:
        mean, std = given_stats(args.image_mean, args.image_std, channels)
    elif mean is not None and len(mean) != channels:  # e.g. an RGB model's statistics for grayscale images
        mean, std = list(fit_channels(mean, channels)), list(fit_channels(std, channels))
    elif mean is None:
        known = KNOWN_STATS.get(args.dataset_name)
        mean, std = known if known and len(known[0]) == channels else measure_stats(train, image_column, channels)
    names = train.features[label_column].names
    train = train.add_column(INDEX_COLUMN, list(range(len(train))))
    augmentation, why = choose_pipeline(args.augmentation, image_size, sizes)
    crop_pct = float(crop_pct or DEFAULT_CROP_PCT)
    train.set_transform(
        ImageTransform(
            image_column,
            label_column,
            channels,
            image_size,
            mean,
            std,
            True,
            augmentation,
            args.split_seed,
            views,
            crop_pct,
            args.auto_augment,
        )
    )
    for split_data in [evaluation] + ([test] if test is not None else []):
        split_data.set_transform(
            ImageTransform(
                image_column, label_column, channels, image_size, mean, std, False, augmentation, crop_pct=crop_pct
            )
        )
    pipeline = (
        f"{augmentation} "
        + (
            "(RandomResizedCrop + flip"
            + (f" + RandAugment {args.auto_augment}" if args.auto_augment else "")
            + f"; evaluation: shorter side to {int(image_size / crop_pct)} + centre crop {image_size})"
            if augmentation == "random_resized_crop"
            else "(CIFAR: resize, 4-pixel padded crop + flip)"
            if augmentation == "crop_flip"
            else "(no augmentation)"
        )
        + f" at {image_size}x{image_size}, {channels} channel(s); why: {why}"
    )
    logger.info(f"data: {len(train):,} training images, {pipeline}")
    return PreparedData(
        train,
        evaluation,
        {i: n for i, n in enumerate(names)},
        image_column,
        label_column,
        source_channels,
        channels,
        list(mean),
        list(std),
        test,
        eval_split,
        f"{eval_description}, {len(evaluation):,} images"
        + (f" (the first {len(evaluation):,}: --max_eval_samples)" if args.max_eval_samples is not None else ""),
        pipeline,
        crop_pct if augmentation == "random_resized_crop" else None,
        missing,
        modes,
    )
