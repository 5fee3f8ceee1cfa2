import os

# Tests never touch the network: the Hub code paths must fail fast and clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import hf_mkcd  # noqa: E402,F401  (registers the CIFAR zoo)

torch.set_num_threads(2)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


def tiny_data(
    size: int = 16, n_train: int = 64, n_eval: int = 32, channels: int = 1, augmentation: str = "crop_flip", views=()
):
    """scikit-learn's real 8x8 digits, upsampled to ``size``: tiny, offline, 10 classes."""
    from hf_mkcd.data import DataArguments, prepare_datasets

    args = DataArguments(
        dataset_name="digits", max_train_samples=n_train, max_eval_samples=n_eval, augmentation=augmentation
    )
    return prepare_datasets(args, channels, size, views=views)


def photo_folder(root, per_class: dict, sizes=(48, 160)) -> str:
    """An imagefolder of random JPEG photos, ``root/{train,test}/<class>/i.jpg``, each of a random width and height
    drawn from ``sizes`` (mixed sizes and aspect ratios); ``per_class`` maps a class to its (train, test) counts."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, counts in per_class.items():
        for split, n in zip(("train", "test"), counts):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(*sizes, 2))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, name, f"{i}.jpg"), quality=90
                )
    return str(root)


def tiny_teacher(seed: int = 0, in_chans: int = 1, num_classes: int = 10):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("cifar_resnet20", in_chans=in_chans, num_classes=num_classes).eval()


def tiny_student(teacher, method: str, data, seed: int = 1, backbone: str = "cifar_resnet20"):
    from hf_mkcd import MKCDStudentForImageClassification
    from hf_mkcd.distillers import get_distiller_class

    cls = get_distiller_class(method)
    torch.manual_seed(seed)
    return MKCDStudentForImageClassification.from_teacher(
        teacher,
        backbone,
        projector=cls.projector,
        head=cls.head,
        id2label=data.id2label,
        image_size=16,
        image_mean=data.mean,
        image_std=data.std,
    )


def tiny_args(output_dir, **kwargs):
    from hf_mkcd.trainer import DistillationTrainingArguments

    defaults = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        lr_decay_epochs=[0],
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    defaults.update(kwargs)
    return DistillationTrainingArguments(**defaults)


class StopAt(TrainerCallback):
    """Stop training once ``step`` optimizer steps are done (an interruption between checkpoints)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
