"""Training augmentations, each drawing from a per-sample ``torch.Generator``.

Every draw comes from the generator the data pipeline seeds with (seed, epoch, sample index), never
from a global RNG, so a resumed run, any number of data-loader workers and any world size see the
same images.

* :func:`crop_flip`: the CIFAR recipe, RandomCrop(size, padding=4, fill 0) + RandomHorizontalFlip.
* :func:`mlkd_strong_view`: MLKD's strong view (Jin et al., CVPR 2023, ``dataset/cifar100.py`` of
  the MLKD code, a FixMatch-style RandAugment): crop + flip, then two operations drawn with
  replacement from :data:`MLKD_OPS`, each at a magnitude drawn uniformly from its range, then a
  cutout of a square of side u * 0.5 * width (u uniform), filled with (125, 123, 114). The operations
  are PIL's, as in the reference: shears and translations about the top-left corner, nearest
  resampling, black fill. Two reference details are kept: the cutout centre is drawn uniformly in
  [1, size] (``np.random.uniform(w)`` means low=w, high=1), and PIL's rectangle includes its far
  edge.

:data:`VIEWS` names the extra views a method can ask for (``Distiller.views``).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch: augmentation is a pure function of (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + int(index)) % 2**63


def crop_flip_draws(
    seed: int, epoch: int, indices, padding: int = 4
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) of each sample of a batch, drawn exactly as the per-sample pipeline draws them (three
    numbers per sample on the CPU; the pixels can then move on the device with :func:`crop_flip_batch`)."""
    generator = torch.Generator()
    draws = []
    for index in indices:
        generator.manual_seed(sample_seed(seed, epoch, int(index)))
        draws.append(crop_flip_draw(generator, padding))
    top, left, flip = zip(*draws) if draws else ((), (), ())
    return torch.tensor(top), torch.tensor(left), torch.tensor(flip, dtype=torch.bool)


def crop_flip_draw(generator: torch.Generator, padding: int = 4) -> Tuple[int, int, bool]:
    """The random numbers of one crop + flip: (top, left) offsets into the padded image, and whether to flip."""
    i, j = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    return i, j, torch.rand(1, generator=generator).item() < 0.5


def crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding, fill 0) + RandomHorizontalFlip(0.5) of a uint8 (C, H, W) tensor."""
    p, (h, w) = padding, x.shape[-2:]
    i, j, flip = crop_flip_draw(generator, padding)
    x = torch.nn.functional.pad(x, (p, p, p, p))[:, i : i + h, j : j + w]
    return x.flip(-1) if flip else x


def crop_flip_batch(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int = 4):
    """:func:`crop_flip` of a whole (B, C, H, W) batch in one gather, on whatever device holds it (the images of a
    dataset kept in GPU memory): the same pixels as the per-sample function given the same draws."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = top.view(b, 1) + torch.arange(h, device=x.device)
    cols = left.view(b, 1) + torch.arange(w, device=x.device)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def _affine(img, coefficients):
    return img.transform(img.size, Image.AFFINE, coefficients)


# (name, operation(img, value), low, high): MLKD's list and ranges
MLKD_OPS: Tuple[Tuple[str, Callable, float, float], ...] = (
    ("autocontrast", lambda img, v: ImageOps.autocontrast(img), 0, 1),
    ("brightness", lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    ("color", lambda img, v: ImageEnhance.Color(img).enhance(v), 0.05, 0.95),
    ("contrast", lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    ("equalize", lambda img, v: ImageOps.equalize(img), 0, 1),
    ("identity", lambda img, v: img, 0, 1),
    ("posterize", lambda img, v: ImageOps.posterize(img, max(1, int(v))), 4, 8),
    ("rotate", lambda img, v: img.rotate(v), -30, 30),
    ("sharpness", lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    ("shear_x", lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
    ("shear_y", lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
    ("solarize", lambda img, v: ImageOps.solarize(img, v), 0, 256),
    ("translate_x", lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), -0.3, 0.3),
    ("translate_y", lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), -0.3, 0.3),
)
CUTOUT_FILL_RGB = (125, 123, 114)
CUTOUT_FILL_GRAY = 123  # luma of the RGB fill, for 1-channel images


def cutout(img: Image.Image, fraction: float, generator: torch.Generator) -> Image.Image:
    """A square of side ``fraction * width`` at a random centre, filled with the reference's grey."""
    if fraction <= 0:
        return img
    v = fraction * img.size[0]
    w, h = img.size
    x0 = int(max(0, _uniform(generator, 1, w) - v / 2.0))
    y0 = int(max(0, _uniform(generator, 1, h) - v / 2.0))
    img = img.copy()
    fill = CUTOUT_FILL_GRAY if img.mode == "L" else CUTOUT_FILL_RGB
    ImageDraw.Draw(img).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), fill)
    return img


def mlkd_rand_augment(img: Image.Image, generator: torch.Generator, num_ops: int = 2) -> Image.Image:
    for _ in range(num_ops):
        _, op, low, high = MLKD_OPS[int(torch.randint(0, len(MLKD_OPS), (1,), generator=generator))]
        img = op(img, _uniform(generator, low, high))
    return cutout(img, _uniform(generator) * 0.5, generator)


def mlkd_strong_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MLKD's strong view of a uint8 (C, H, W) tensor with C in {1, 3}."""
    x = crop_flip(x, generator)
    mode = "L" if x.shape[0] == 1 else "RGB"
    img = Image.fromarray(x.permute(1, 2, 0).numpy().squeeze(-1) if mode == "L" else x.permute(1, 2, 0).numpy(), mode)
    array = np.array(mlkd_rand_augment(img, generator))  # a writable copy
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


VIEWS: Dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {"strong": mlkd_strong_view}
