"""Loading teachers and checkpoints, with errors that say what is wrong and what to do.

A teacher can be: a directory saved by hf_mkcd (``save_pretrained`` of a plain student), by
transformers' ``TimmWrapperForImageClassification`` or by ``timm.models.save_for_hf``; a timm or
CIFAR-zoo name plus a checkpoint file in the community layout (``.pth`` with ``["model"]`` /
``["state_dict"]``, or ``.safetensors``); or a Hub id (fails clearly when offline).
"""
from __future__ import annotations

import json
import os
import pickle
import tarfile
import zipfile
from typing import Dict, Optional

import timm
import torch
import torch.nn as nn

from .hub import HubUnavailableError, hub_reachable, offline_mode, unreachable_reason
from .models.helpers import check_num_classes, create_timm_model, teacher_linear_head
from .models.modeling_mkcd_student import MKCDStudentForImageClassification


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys/shapes do not fit the model."""


_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "student")
_PREFIXES = ("module.", "timm_model.", "backbone.", "model.")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` dict from ``.safetensors`` or a PyTorch checkpoint (``weights_only``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if tarfile.is_tarfile(path) and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path!r} is a tar archive (e.g. mdistiller's cifar_teachers.tar), not a checkpoint: extract it and pass "
            "the file inside, e.g. cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            obj = load_file(path)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path!r} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path!r} holds Python objects besides tensors, which torch.load(weights_only=True) refuses to run. "
                f"If you trust the file, re-save only its state dict. ({err})"
            ) from err
        except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint (corrupt or truncated?): {err}") from err
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path!r} holds no state dict (looked under {_WRAPPER_KEYS}); top level: {keys}")
    return obj


def _strip_prefixes(sd: Dict[str, torch.Tensor], model_keys) -> Dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if not set(sd) & set(model_keys) and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _matching_zoo_models(keys) -> list:
    """CIFAR-zoo names whose state-dict keys equal ``keys`` (ignoring BN counters): a hint on mismatch."""
    from .models import CIFAR_MODELS

    want = {k for k in keys if not k.endswith("num_batches_tracked")}
    found = []
    for name in CIFAR_MODELS:
        with torch.device("meta"):
            m = timm.create_model(name)
        if {k for k in m.state_dict() if not k.endswith("num_batches_tracked")} == want:
            found.append(name)
    return found


def load_state_dict_file(model: nn.Module, path: str) -> nn.Module:
    """Load ``path`` into ``model`` strictly, tolerating what is harmless and naming what is not.

    Tolerated: wrapper dicts (``model`` / ``state_dict``), ``module.``-style prefixes, missing BN
    ``num_batches_tracked`` (PyTorch 0.4-era checkpoints), an RGB first conv loaded into a 1-channel
    model (channels summed, as timm does for pretrained weights).
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    sd = _strip_prefixes(sd, own)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    wkey = f"{first_conv}.weight" if first_conv else None
    if wkey in sd and wkey in own and sd[wkey].shape[1] != own[wkey].shape[1] and sd[wkey].ndim == 4:
        from timm.models import adapt_input_conv

        sd[wkey] = adapt_input_conv(own[wkey].shape[1], sd[wkey])
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        head = {f"{n}.weight" for n in [(model.pretrained_cfg or {}).get("classifier")] if n} if hasattr(model, "pretrained_cfg") else set()
        if not missing and not unexpected and shapes and all(s.split(":")[0] in head | {h[:-6] + "bias" for h in head} for s in shapes):
            n_ckpt = sd[next(iter(head))].shape[0]
            raise CheckpointError(
                f"class-count mismatch: {path!r} has a {n_ckpt}-class classifier, the {arch} model was built with "
                f"{own[next(iter(head))].shape[0]} classes. Build it with num_classes={n_ckpt}, or use a checkpoint "
                "trained on your label set."
            )
        lines = [f"checkpoint {path!r} does not fit {arch}:"]
        for title, items in (("missing from the checkpoint", missing), ("not in the model", unexpected),
                             ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        zoo = _matching_zoo_models(sd.keys())
        if zoo:
            lines.append(f"  its keys match the CIFAR-zoo architecture(s): {', '.join(zoo)}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    return model


def checkpoint_num_classes(architecture: str, path: str) -> Optional[int]:
    """Rows of the classifier weight in ``path`` (a checkpoint for the timm ``architecture``), or None."""
    from timm.models import get_pretrained_cfg_value

    head = get_pretrained_cfg_value(architecture, "classifier")
    if not head:
        return None
    sd = read_state_dict(path)
    for key, value in sd.items():
        if (key == f"{head}.weight" or key.endswith(f".{head}.weight")) and value.ndim == 2:
            return int(value.shape[0])
    return None


def _load_directory(path: str) -> nn.Module:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{path!r} has no config.json: not a directory saved by hf_mkcd, transformers or timm")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") == MKCDStudentForImageClassification.config_class.model_type:
        student = MKCDStudentForImageClassification.from_pretrained(path)
        if student.projector is not None or student.classifier is not None:
            raise ValueError(
                f"{path!r} holds a distilled student with a projector / reused teacher head; only plain classifiers "
                "(e.g. saved by scripts/train_teacher.py) can serve as teachers."
            )
        backbone, c = student.backbone, student.config
        # the input this classifier was trained on travels with it (size, channels, normalisation)
        backbone.pretrained_cfg = {
            **(backbone.pretrained_cfg or {}),
            "input_size": (c.num_channels, c.image_size, c.image_size),
            **({"mean": tuple(c.image_mean), "std": tuple(c.image_std)} if c.image_mean and c.image_std else {}),
        }
        return backbone
    if "architecture" in cfg:
        create_timm_model(cfg["architecture"], num_classes=0)  # clear error if timm does not know the name
        if "pretrained_cfg" in cfg:  # timm's own Hub layout (save_for_hf)
            return timm.create_model(f"local-dir:{path}", pretrained=True)
        from transformers import TimmWrapperForImageClassification

        return TimmWrapperForImageClassification.from_pretrained(path).timm_model
    raise ValueError(f"{path!r}: config.json has neither model_type 'mkcd_student' nor a timm 'architecture'")


def _load_from_hub(repo_id: str) -> nn.Module:
    """A teacher repository on the Hub (timm Hub layout or an hf_mkcd classifier); the local cache when the Hub
    cannot be reached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError


    patterns = ["*.json", "*.safetensors", "*.py"]
    try:
        if hub_reachable():
            local = snapshot_download(repo_id, allow_patterns=patterns)
        else:
            with offline_mode():
                local = snapshot_download(repo_id, allow_patterns=patterns)
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise ValueError(f"teacher {repo_id!r}: no such (accessible) model on the Hub: {err}") from err
    except Exception as err:  # offline mode, DNS failure, timeouts, not cached: all mean "cannot reach the Hub"
        raise HubUnavailableError(
            f"teacher {repo_id!r} is not a local path, not in the local cache, and the Hugging Face Hub cannot be "
            f"reached ({unreachable_reason()}; {type(err).__name__}). Offline, pass a local directory saved by "
            "hf_mkcd/transformers/timm, or a timm / CIFAR-zoo name with a checkpoint file (--teacher_checkpoint path.pth)."
        ) from err
    return _load_directory(local)


def load_teacher(name_or_path: str, checkpoint: Optional[str] = None, num_classes: Optional[int] = None,
                 allow_random_init: bool = False, **model_kwargs) -> nn.Module:
    """Return a frozen timm classifier (eval mode, ``requires_grad=False``).

    Raises before anything trains if the teacher's classifier predicts a different number of classes
    than ``num_classes`` (the dataset's).
    """
    if os.path.isdir(name_or_path):
        teacher = _load_directory(name_or_path)
    elif timm.is_model(name_or_path):
        if checkpoint is None and not allow_random_init:
            raise ValueError(
                f"teacher {name_or_path!r} has no weights: pass a checkpoint file (community .pth or .safetensors), "
                "or a directory / Hub id of a trained model"
            )
        if checkpoint is not None:
            # the checkpoint's own classifier says how many classes the teacher has (a mismatch with the
            # dataset is reported by the class-count check below, not as a shape error)
            model_kwargs.setdefault("num_classes", checkpoint_num_classes(name_or_path, checkpoint) or num_classes)
        teacher = create_timm_model(name_or_path, **{k: v for k, v in model_kwargs.items() if v is not None})
        if checkpoint is not None:
            load_state_dict_file(teacher, checkpoint)
    elif os.path.isfile(name_or_path):
        raise ValueError(f"{name_or_path!r} is a file: give the architecture as the teacher and the file as its checkpoint")
    elif "/" in name_or_path and ":" not in name_or_path and not name_or_path.startswith((".", "/")):
        teacher = _load_from_hub(name_or_path)
    else:
        create_timm_model(name_or_path)  # raises with close matches
        raise AssertionError("unreachable")
    if num_classes is not None and hasattr(teacher, "get_classifier"):
        check_num_classes(**{f"teacher {name_or_path!r}": teacher_linear_head(teacher).out_features, "dataset": num_classes})
    return teacher.eval().requires_grad_(False)
