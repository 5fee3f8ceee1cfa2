"""The teacher: any timm or transformers image classifier, seen through the one interface the methods read.

* :class:`TransformersTeacher` gives a transformers ``...ForImageClassification`` (ViT, ResNet, ConvNeXt, Swin,
  and others with the same outputs) timm's interface: ``forward_features`` (the map its classifier pools, or
  its tokens), ``forward_head``, ``forward_intermediates`` (stage maps from ``output_hidden_states``),
  ``get_classifier`` and a ``pretrained_cfg`` with its input size, normalisation and class names (from its
  image processor and config). How its head pools is found by probing once, not assumed: mean over the map
  (ResNet, Swin), a norm after the mean (ConvNeXt: no head reuse), or the class token (ViT: tokens, no map).
* :class:`DistillationTeacher` runs it in training: frozen in eval mode, under ``no_grad`` and the
  accelerator's autocast, with the inputs' channels matched to its first convolution, reading what it can
  from the teacher-output cache and writing what it computes (``hf_mkcd.teacher_cache``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from .features import teacher_outputs
from .models.helpers import first_conv_in_channels, match_channels


def is_transformers_classifier(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and not hasattr(model, "forward_features")


def as_timm_teacher(model: nn.Module, image_processor=None) -> nn.Module:
    """``model`` if it already speaks timm's interface, else a :class:`TransformersTeacher` around it."""
    if isinstance(model, TransformersTeacher) or not is_transformers_classifier(model):
        return model
    return TransformersTeacher(model, image_processor)


class TransformersTeacher(nn.Module):
    """A transformers image classifier behind timm's interface (see the module docstring)."""

    def __init__(self, model: nn.Module, image_processor=None):
        super().__init__()
        self.model = model
        self.base = getattr(model, model.base_model_prefix)
        self.linear = _final_linear(model)
        self.name = type(model).__name__
        self.pretrained_cfg = _pretrained_cfg(model, image_processor)
        self.pooling = self._probe_pooling()

    # -- what the head reads -----------------------------------------------------------------------------
    @torch.no_grad()
    def _probe_pooling(self) -> str:
        """How the classifier's input comes from ``last_hidden_state``: ``mean`` (a map, or square tokens turned
        into one), ``mean_norm`` (the base model's norm after the mean), ``cls`` (the class token), else
        ``other`` (logits only)."""
        c, h, w = self.pretrained_cfg["input_size"]
        was_training = self.model.training
        self.model.eval()
        seen = {}
        hook = self.linear.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0]))
        try:
            x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
            x = x.to(next(self.model.parameters()).device)
            last = self.base(x).last_hidden_state
            self.model(pixel_values=x)
        finally:
            hook.remove()
            self.model.train(was_training)
        z = seen["z"].flatten(1)

        def close(a):
            return a.shape == z.shape and torch.allclose(a, z, atol=1e-5, rtol=1e-4)

        if last.ndim == 3 and close(last[:, 0]):
            return "cls"
        if last.ndim == 3 and math.isqrt(last.shape[1]) ** 2 == last.shape[1]:
            last = _tokens_to_map(last)  # square token grids (Swin) are maps
        if last.ndim == 4:
            pooled = last.mean((2, 3))
            if close(pooled):
                return "mean"
            norm = self._head_norm()
            if norm is not None and close(norm(pooled)):
                return "mean_norm"
        return "other"

    def _head_norm(self):
        """The base model's final norm (ConvNeXt's ``layernorm``), which a ``mean_norm`` head applies after pooling."""
        return getattr(self.base, "layernorm", None) or getattr(self.base, "norm", None)

    # -- timm's interface --------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        last = self.base(pixel_values=x).last_hidden_state
        return _tokens_to_map(last) if self.pooling in ("mean", "mean_norm") and last.ndim == 3 else last

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = features[:, 0]
        elif self.pooling in ("mean", "mean_norm"):
            pooled = features.mean((2, 3))
            if self.pooling == "mean_norm":
                pooled = self._head_norm()(pooled)
        else:
            raise ValueError(
                f"the teacher {self.name}'s head does not read a mean-pooled map or a class token, so its pooled "
                "features and head cannot be reached separately: choose a method that reads its logits only"
            )
        return pooled if pre_logits else self.linear(pooled)

    def forward_intermediates(self, x: torch.Tensor, **kwargs):
        """(the pre-pool map, the stage maps: embeddings, then each stage) from ``output_hidden_states``."""
        if self.pooling not in ("mean", "mean_norm"):
            raise ValueError(
                f"the teacher {self.name} gives tokens, not spatial stage maps: methods that read stage maps "
                "(fitnet, at, sp, reviewkd, ...) are refused for it; logit and pooled-feature methods work"
            )
        out = self.base(pixel_values=x, output_hidden_states=True)
        stages = getattr(out, "reshaped_hidden_states", None) or out.hidden_states
        stages = [s if s.ndim == 4 else _tokens_to_map(s) for s in stages]
        last = out.last_hidden_state
        return (_tokens_to_map(last) if last.ndim == 3 else last), list(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits

    @property
    def config(self):
        return self.model.config


class DistillationTeacher:
    """The frozen teacher in training: what a method reads, per batch and view, computed or read from the cache."""

    def __init__(
        self,
        model: nn.Module,
        needs,
        views=(),
        cache=None,
        autocast=None,
        default_channels: int = 3,
        mirror_device=None,
    ):
        self.model, self.needs, self.views, self.cache = model, frozenset(needs), tuple(views), cache
        self.autocast = autocast
        self.in_chans = first_conv_in_channels(model, default_channels)
        # on a GPU, a complete cached epoch is held in device memory where it fits: reading it from files (and
        # copying it over) was slower than recomputing the teacher for map-reading methods
        self.mirror_device, self._mirror_epoch, self._said = mirror_device, None, False

    def __call__(self, inputs: Dict[str, torch.Tensor], views: Dict[str, torch.Tensor]) -> Dict[str, object]:
        cache, key = self.cache, None
        if cache is not None and "aug_epoch" in inputs and "index" in inputs:
            epochs = inputs["aug_epoch"]
            if bool((epochs == epochs[0]).all()):
                key = (int(epochs[0]), inputs["index"])
                if self.mirror_device is not None and key[0] != self._mirror_epoch:
                    self._mirror(key[0])
                hit = cache.read(*key, self.needs, views)
                if hit is not None:
                    return _to_device(hit, inputs["pixel_values"].device)
        with torch.no_grad(), self.autocast() if self.autocast is not None else contextlib.nullcontext():
            out = teacher_outputs(self.model, match_channels(inputs["pixel_values"], self.in_chans), self.needs)
            for view, pixels in views.items():
                out[view] = teacher_outputs(self.model, match_channels(pixels, self.in_chans), self.needs)
        if key is not None:
            cache.write(*key, out, self.needs, views)
        return out

    def _mirror(self, epoch: int) -> None:
        import logging

        self._mirror_epoch = epoch
        held, size = self.cache.mirror(
            epoch, self.mirror_device, self.needs, self.views, _mirror_budget(self.mirror_device)
        )
        if not self._said and size is not None:
            self._said = True
            logging.getLogger("hf_mkcd").info(
                f"teacher cache: complete epochs are {'held in' if held else 'too large for'} {self.mirror_device} "
                f"memory ({size / 2**20:.0f} MB per epoch)"
                + (": reads are gathers there" if held else ": read from the files")
            )


def _mirror_budget(device) -> Optional[int]:
    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] * 0.5)  # half of what is free now
    return None


def _to_device(outputs, device):
    """Cached outputs (tensors, lists of stage maps, a view's dict of them) on ``device``."""
    if isinstance(outputs, dict):
        return {k: _to_device(v, device) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_device(v, device) for v in outputs]
    return outputs.to(device, non_blocking=True)


def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    b, n, c = tokens.shape
    side = math.isqrt(n)
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def _final_linear(model: nn.Module) -> nn.Linear:
    head = getattr(model, "classifier", None) or getattr(model, "fc", None) or getattr(model, "head", None)
    linears: List[nn.Linear] = [m for m in (head.modules() if head is not None else []) if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ValueError(
            f"{type(model).__name__}'s classifier is not one linear layer ({type(head).__name__}): hf_mkcd reads "
            "transformers classifiers whose head is a single nn.Linear (ViT, DeiT, ResNet, ConvNeXt, Swin, ...)"
        )
    return linears[0]


def _pretrained_cfg(model: nn.Module, processor) -> dict:
    """timm's ``pretrained_cfg`` for a transformers classifier: input size and normalisation from its image
    processor (else its config), class names from its ``id2label``."""
    config = model.config
    channels = int(getattr(config, "num_channels", 3) or 3)
    size = None
    if processor is not None:
        crop = getattr(processor, "crop_size", None) or {}
        resize = getattr(processor, "size", None) or {}
        size = crop.get("height") or resize.get("height") or resize.get("shortest_edge")
    size = int(size or getattr(config, "image_size", None) or 224)
    cfg = {"architecture": type(model).__name__, "input_size": (channels, size, size)}
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        cfg["mean"], cfg["std"] = tuple(processor.image_mean), tuple(processor.image_std)
    if processor is not None:  # the share of the resized image its evaluation keeps (timm's crop_pct)
        crop, resize = getattr(processor, "crop_size", None) or {}, getattr(processor, "size", None) or {}
        cfg["crop_pct"] = float(
            getattr(processor, "crop_pct", None)
            or (crop["height"] / resize["shortest_edge"] if crop.get("height") and resize.get("shortest_edge") else 1.0)
        )
    id2label = getattr(config, "id2label", None) or {}
    if id2label:
        cfg["label_names"] = [id2label[i] for i in sorted(id2label, key=int)]
    cfg["num_classes"] = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return cfg
