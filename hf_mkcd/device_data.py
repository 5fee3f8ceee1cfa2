"""Training images kept in device memory: a CIFAR-sized training set as one uint8 tensor where the model runs.

CIFAR-100's 50,000 training images are 150 MB as uint8; on a GPU, decoding and augmenting them on the host each
step, then copying them over, is the DataLoader's work that the step waits for. :class:`DeviceImages` holds the
resized images once on the device and makes each batch there: the crop + flip of the whole batch is one gather
(:func:`hf_mkcd.augment.crop_flip_batch`) with each sample's draws from (seed, epoch, index), exactly as the
per-sample pipeline draws them, so the pixels are the same and a resumed run stays bit-exact. It takes the
place of the training set (``--device_data``); evaluation keeps the DataLoader path. Data with extra views (MLKD)
or photo crops keeps the DataLoader path (refused with the reason).
"""

from __future__ import annotations

from typing import Dict, List

import torch

from .augment import crop_flip_batch, crop_flip_draws


class DeviceImages(torch.utils.data.Dataset):
    """A prepared training set (``hf_mkcd.data.prepare_datasets``) held on ``device``; batches come out whole."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform
        self.epoch = 0

    @classmethod
    def from_prepared(cls, dataset, device) -> "DeviceImages":
        transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if transform is None or not hasattr(transform, "resized_uint8"):
            raise ValueError("--device_data needs a training set prepared by hf_mkcd.data.prepare_datasets")
        if transform.views:
            raise ValueError(
                f"--device_data: the extra view(s) {list(transform.views)} are made on the host, image "
                "by image; this method keeps the DataLoader path (drop --device_data)"
            )
        if transform.photo:
            raise ValueError(
                "--device_data holds CIFAR-sized data (crop_flip or no augmentation); photos of many "
                "sizes keep the DataLoader path (drop --device_data)"
            )
        raw = dataset.with_format(None)
        images, labels = [], []
        for start in range(0, len(raw), 1024):
            rows = raw[start : start + 1024]
            images += [transform.resized_uint8(image) for image in rows[transform.image_column]]
            labels += list(rows[transform.label_column])
        return cls(torch.stack(images).to(device), torch.tensor(labels, device=device), transform)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: List[int]) -> Dict[str, torch.Tensor]:
        """One batch, made on the device (the DataLoader's batched fetch)."""
        device = self.images.device
        index = torch.as_tensor(indices, device=device)
        x = self.images.index_select(0, index)
        if self.transform.augment:  # crop_flip: the per-sample draws, applied as one gather
            top, left, flip = (
                t.to(device, non_blocking=True) for t in crop_flip_draws(self.transform.seed, self.epoch, indices)
            )
            x = crop_flip_batch(x, top, left, flip)
        return {
            "pixel_values": self.transform.normalize(x),
            "labels": self.labels.index_select(0, index),
            "index": index,
            "aug_epoch": torch.full((len(indices),), self.epoch, device=device),
        }

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate(batch):
    """The trainer's collator: a batch :class:`DeviceImages` made whole passes through; lists of samples (the
    evaluation sets) are stacked as transformers' default collator does."""
    if isinstance(batch, dict):
        return batch
    from transformers import default_data_collator

    return default_data_collator(batch)
