"""Feature projectors: map a student feature map (C_s, H_s, W_s) onto a teacher's (C_t, H_t, W_t).

* ``mkcd``   - MKCD's encoder-decoder projector (our design, docs/mkcd.md): a compact latent between a
               1x1+3x3 encoder and a 3x3+1x1 decoder; by default every size ratio pools the larger map to
               the smaller, ``resample="learned"`` learns 2x ratios (stride-2 conv in the encoder, stride-2
               transposed conv in the decoder).
* ``simkd``  - SimKD's 1x1 -> 3x3 -> 1x1 bottleneck (Chen et al., CVPR 2022), faithful to
               ``DefangChen/SimKD`` ``models/util.py``.
* ``fitnet`` - FitNet's ConvReg hint regressor (mdistiller ``_common.py``): conv sized from the
               spatial ratio, then BN + ReLU.
* ``srrl``   - SRRL's connector on the pooled feature (1x1 conv + BN + ReLU).
* ``identity`` - no parameters: the student map is compared with / classified by the teacher's as it
               is (channels must match); the "no projector" point of the MKCD ablation.

Spatial alignment for every other ratio follows SimKD: the larger map is adaptive-average-pooled
to the smaller one. A projector's :attr:`output_size` says where its output lives;
:meth:`align_teacher` pools a teacher map to it, so feature losses always compare equal shapes.

This file ships inside every saved student (remote code): torch only.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _shape(shape: Sequence[int], who: str) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"{who} feature shape must be (channels, height, width) of a convolutional map, got {shape}. "
            "Token features (ViT-style (N, C)) have no spatial map to project: pick a CNN, or a method "
            "that only uses logits/pooled features."
        )
    return shape


def conv_bn_relu(c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class FeatureProjector(nn.Module):
    """Base class: holds the two shapes and the spatial plan.

    ``plan`` is one of ``same``, ``down2`` (student map is 2x the teacher's), ``up2`` (teacher map is
    2x the student's), ``pool`` (any other ratio: the larger map is pooled to the smaller).
    """

    learned_resampling = False  # True: ``down2``/``up2`` are handled by strided (transposed) convs

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]):
        super().__init__()
        self.student_shape = _shape(student_shape, "student")
        self.teacher_shape = _shape(teacher_shape, "teacher")
        (_, hs, ws), (_, ht, wt) = self.student_shape, self.teacher_shape
        if (hs, ws) == (ht, wt):
            self.plan = "same"
        elif self.learned_resampling and (hs, ws) == (2 * ht, 2 * wt):
            self.plan = "down2"
        elif self.learned_resampling and (2 * hs, 2 * ws) == (ht, wt):
            self.plan = "up2"
        else:
            self.plan = "pool"
        if self.plan in ("same", "up2"):
            self.output_size = (ht, wt)
        else:  # down2 lands on the teacher size; pool lands on the smaller size per dimension
            self.output_size = (min(hs, ht), min(ws, wt))
        self.input_size = (min(hs, ht), min(ws, wt)) if self.plan == "pool" else (hs, ws)

    def pool_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.plan == "pool" and tuple(x.shape[-2:]) != self.input_size:
            x = F.adaptive_avg_pool2d(x, self.input_size)
        return x

    def align_teacher(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Pool a teacher map to :attr:`output_size` (SimKD: the larger map is pooled)."""
        if tuple(teacher_feature.shape[-2:]) != tuple(self.output_size):
            teacher_feature = F.adaptive_avg_pool2d(teacher_feature, self.output_size)
        return teacher_feature

    def extra_repr(self) -> str:
        return f"student={self.student_shape}, teacher={self.teacher_shape}, plan={self.plan}"


class EncoderDecoderProjector(FeatureProjector):
    """MKCD's encoder-decoder projector (our design: docs/mkcd.md gives the ablation behind each default).

    Defaults: residual, f = 4, r = 2, pooled resampling. In the ablation, without the residual shortcut every
    squeeze of the latent cost accuracy and an identity map beat every encoder-decoder; with it, widths from f=2
    to f=8 scored alike, so the lighter f=4 (a third of SimKD's parameters where the maps match).

    encoder: 1x1 conv C_s->m, BN, ReLU; 3x3 conv m->m/r (stride 2 when the student map is twice the
             teacher's), BN, ReLU  -> a compact latent of m/r channels.
    decoder: 3x3 conv m/r->m (a 2x2 stride-2 transposed conv when the teacher map is twice the
             student's: lighter than a 3x3, no overlapping kernels), BN, ReLU; 1x1 conv m->C_t, BN,
             then ``out_act``.
    m = C_t / ``factor``. ``skip=True`` adds a 1x1 conv+BN shortcut from input to output (before the
    final activation). ``residual=True`` makes the encoder-decoder a correction on top of a shortcut
    that is the identity wherever the two maps have the same channels (else a 1x1 conv + BN), with
    the decoder's last BN starting at zero: the projector starts as the shortcut and learns what the
    student's map lacks (zero-init residual branches, as in Goyal et al., 2017). ``resample="pool"`` (the
    default, round two of the ablation) pools the larger map to the smaller for 2x ratios too; ``"learned"``
    resamples them by strided (transposed) convs, which on a 1x1 student map against a 2x2 teacher map has to
    invent detail the student's map does not hold.
    ``out_act="relu"`` matches teachers whose pre-pool map is post-ReLU (all of the CIFAR zoo); ``"none"`` for teachers
    ending in a norm (ConvNeXt, ...).
    """

    learned_resampling = True

    def __init__(
        self,
        student_shape,
        teacher_shape,
        factor: int = 4,
        latent_ratio: int = 2,
        skip: bool = False,
        residual: bool = True,
        out_act: str = "relu",
        resample: str = "pool",
    ):
        if resample not in ("learned", "pool"):
            raise ValueError(f"mkcd projector: resample {resample!r}; choose 'learned' or 'pool'")
        # "pool": every size ratio pools the larger map to the smaller (SimKD's rule), so the projector never has
        # to invent detail a smaller student map does not hold; the teacher's head pools its map anyway
        self.learned_resampling = resample == "learned"
        super().__init__(student_shape, teacher_shape)
        c_s, c_t = self.student_shape[0], self.teacher_shape[0]
        m = c_t // factor
        z = m // latent_ratio
        if m < 1 or z < 1:
            raise ValueError(
                f"mkcd projector: C_t={c_t} / factor={factor} / latent_ratio={latent_ratio} leaves no channels"
            )
        stride = 2 if self.plan == "down2" else 1
        self.encoder = nn.Sequential(conv_bn_relu(c_s, m, 1), conv_bn_relu(m, z, 3, stride))
        if self.plan == "up2":
            up = nn.ConvTranspose2d(z, m, 2, 2, bias=False)
            first = nn.Sequential(up, nn.BatchNorm2d(m), nn.ReLU(inplace=True))
        else:
            first = conv_bn_relu(z, m, 3)
        self.decoder = nn.Sequential(first, conv_bn_relu(m, c_t, 1, relu=False))
        if skip and residual:
            raise ValueError("mkcd projector: skip and residual are two forms of the same shortcut, choose one")
        self.skip = self.shortcut = None
        if skip:
            resample = nn.Upsample(scale_factor=2, mode="nearest") if self.plan == "up2" else nn.Identity()
            self.skip = nn.Sequential(resample, nn.Conv2d(c_s, c_t, 1, stride, bias=False), nn.BatchNorm2d(c_t))
        if residual:
            resample = {"up2": nn.Upsample(scale_factor=2, mode="nearest"), "down2": nn.AvgPool2d(2)}.get(
                self.plan, nn.Identity()
            )
            channels = (
                nn.Identity() if c_s == c_t else nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t))
            )
            self.shortcut = nn.Sequential(resample, channels)
            last_bn = self.decoder[-1][1]
            nn.init.zeros_(last_bn.weight)
            last_bn._zero_init = True  # the student's weight init keeps it at zero
        self.out_act = _activation(out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_input(x)
        out = self.decoder(self.encoder(x))
        if self.skip is not None:
            out = out + self.skip(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.out_act(out)


class SimKDProjector(FeatureProjector):
    """SimKD: 1x1 conv C_s->m, BN, ReLU; 3x3 conv m->m, BN, ReLU; 1x1 conv m->C_t, BN, ReLU; m = C_t/f.

    No biases; parameters = C_s*m + 9m^2 + m*C_t + 2(2m + C_t) (214,016 for resnet8x4->resnet32x4, f=2).
    """

    def __init__(self, student_shape, teacher_shape, factor: int = 2, out_act: str = "relu"):
        super().__init__(student_shape, teacher_shape)
        c_s, c_t = self.student_shape[0], self.teacher_shape[0]
        m = c_t // factor
        if m < 1:
            raise ValueError(f"simkd projector: C_t={c_t} / factor={factor} leaves no channels")
        self.layers = nn.Sequential(conv_bn_relu(c_s, m, 1), conv_bn_relu(m, m, 3), conv_bn_relu(m, c_t, 1, relu=False))
        self.out_act = _activation(out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.layers(self.pool_input(x)))


class ConvRegressor(FeatureProjector):
    """FitNet's hint regressor (mdistiller ``ConvReg``), conv chosen from the spatial sizes:
    H_s = 2H_t: 3x3 stride-2 conv; 2H_s = H_t: 4x4 stride-2 transposed conv; H_s >= H_t: a
    (1+H_s-H_t) x (1+W_s-W_t) conv; then BN + ReLU. A student map smaller than the teacher's (other
    than exactly half) has no regressor: that raises."""

    def __init__(self, student_shape, teacher_shape, out_act: str = "relu"):
        super().__init__(student_shape, teacher_shape)
        (c_s, hs, ws), (c_t, ht, wt) = self.student_shape, self.teacher_shape
        if (hs, ws) == (2 * ht, 2 * wt):
            conv = nn.Conv2d(c_s, c_t, 3, 2, 1)
        elif (2 * hs, 2 * ws) == (ht, wt):
            conv = nn.ConvTranspose2d(c_s, c_t, 4, 2, 1)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(c_s, c_t, (1 + hs - ht, 1 + ws - wt))
        else:
            raise ValueError(
                f"fitnet regressor: student map {hs}x{ws} is smaller than the teacher's {ht}x{wt} and not half "
                "of it, so no regressor is defined. Choose another hint layer, or the 'mkcd'/'simkd' projector "
                "(they pool the larger map)."
            )
        self.plan, self.output_size, self.input_size = "learned", (ht, wt), (hs, ws)
        self.conv, self.bn = conv, nn.BatchNorm2d(c_t)
        self.out_act = _activation(out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.bn(self.conv(x)))


class PooledConnector(FeatureProjector):
    """SRRL's connector (Yang et al., ICLR 2021; DefangChen/SimKD ``SRRL``): global-average-pool the
    student map, then 1x1 conv C_s->C_t + BN + ReLU on the 1x1 map. Its output is (C_t, 1, 1), so
    the teacher's head reads it as a pooled teacher feature."""

    def __init__(self, student_shape, teacher_shape, out_act: str = "relu"):
        super().__init__(student_shape, teacher_shape)
        c_s, c_t = self.student_shape[0], self.teacher_shape[0]
        self.plan, self.output_size, self.input_size = "pool", (1, 1), (1, 1)
        self.conv, self.bn = nn.Conv2d(c_s, c_t, 1, bias=False), nn.BatchNorm2d(c_t)
        self.out_act = _activation(out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(self.bn(self.conv(F.adaptive_avg_pool2d(x, 1))))


class IdentityProjector(FeatureProjector):
    """No projection: the student map itself, pooled where the sizes differ. Channels must match."""

    def __init__(self, student_shape, teacher_shape):
        super().__init__(student_shape, teacher_shape)
        c_s, c_t = self.student_shape[0], self.teacher_shape[0]
        if c_s != c_t:
            raise ValueError(
                f"identity projector: the student map has {c_s} channels, the teacher's {c_t}; "
                "choose a projector that maps channels (mkcd, simkd)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_input(x)


def output_activation(target: torch.Tensor) -> str:
    """The final activation a projector onto ``target`` maps needs: ``"relu"`` only where the target cannot be
    negative (a post-ReLU map: every CIFAR-zoo pre-pool map), else ``"none"``. A signed target (WRN's stage maps end
    before their BN + ReLU, MobileNetV2's in a linear bottleneck, ConvNeXt's in a norm) keeps part of its energy
    below zero, which a ReLU output can never reproduce: the feature loss would have a floor no training lowers.
    Decided on a probe of the target map, not assumed per family."""
    return "relu" if bool((target >= 0).all()) else "none"


def _activation(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU(inplace=True), "none": nn.Identity()}
    if name not in acts:
        raise ValueError(f"unknown out_act {name!r}; choose one of {sorted(acts)}")
    return acts[name]


PROJECTORS: Dict[str, type] = {
    "mkcd": EncoderDecoderProjector,
    "simkd": SimKDProjector,
    "fitnet": ConvRegressor,
    "srrl": PooledConnector,
    "identity": IdentityProjector,
}


def projector_options(name: str) -> Dict[str, object]:
    """The options a projector takes, with their defaults (``factor``, ``latent_ratio``, ``skip``, ...)."""
    import inspect

    params = list(inspect.signature(PROJECTORS[name].__init__).parameters.values())[3:]
    return {p.name: p.default for p in params}


def build_projector(name: str, student_shape, teacher_shape, **kwargs) -> FeatureProjector:
    """The projector owns its options: one it does not take is refused by name, never dropped."""
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; choose one of {sorted(PROJECTORS)}")
    unknown = set(kwargs) - set(projector_options(name))
    if unknown:
        raise ValueError(f"projector {name!r} takes no {sorted(unknown)}; its options are {projector_options(name)}")
    return PROJECTORS[name](student_shape, teacher_shape, **kwargs)


def count_parameters(module: Optional[nn.Module]) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
