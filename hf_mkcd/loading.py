"""Loading teachers and checkpoints, with errors that say what is wrong and what to do.

A teacher can be: a directory saved by hf_mkcd (``save_pretrained`` of a plain student), by
transformers' ``TimmWrapperForImageClassification`` or by ``timm.models.save_for_hf``; a timm or
CIFAR-zoo name plus a checkpoint file in the community layout (``.pth`` with ``["model"]`` /
``["state_dict"]``, or ``.safetensors``); or a Hub id (fails clearly when offline).
"""

from __future__ import annotations

import json
import logging
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


logger = logging.getLogger("hf_mkcd")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys/shapes do not fit the model."""


_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "student")
_PREFIXES = ("module.", "timm_model.", "backbone.", "model.")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` dict from ``.safetensors`` or a PyTorch checkpoint (``weights_only``)."""
    return _state_dict_of(_read_checkpoint(path), path)


def _state_dict_of(raw, path: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint's top-level object: under a usual wrapper key, else the largest dict of
    tensors at any depth."""
    obj = raw
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        candidates = state_dict_candidates(raw)
        if candidates:  # nested deeper than the usual wrappers: the largest tensor dict
            return max(candidates, key=lambda c: len(c[1]))[1]
        keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path!r} holds no state dict (looked under {_WRAPPER_KEYS}); top level: {keys}")
    return obj


def state_dict_candidates(obj, label: str = "") -> list:
    """Every ``(where, state dict)`` a checkpoint of another KD codebase may hold: each dict of tensors at any
    depth, and inside each, the keys under each dotted prefix of one or two parts (``module.``, ``student.``,
    ``module.student.``...) with that prefix removed."""
    found = []
    if not isinstance(obj, dict):
        return found
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if tensors:
        found.append((label or "the top level", tensors))
        prefixes = {".".join(k.split(".")[:depth]) + "." for k in tensors for depth in (1, 2) if k.count(".") > depth}
        for prefix in sorted(prefixes):
            part = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if part:
                found.append((f"{label or 'the top level'}, keys under {prefix!r}", part))
    for key, value in obj.items():
        if isinstance(value, dict):
            found += state_dict_candidates(value, f"{label}[{key!r}]")
    return found


def _problems(sd: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> tuple:
    """(missing, unexpected, shape mismatches) of ``sd`` against the model's state dict ``own``."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    return missing, unexpected, shapes


def _pick_candidate(raw, path: str, model: nn.Module, arch: str) -> Optional[Dict[str, torch.Tensor]]:
    """The first sub-dict of the checkpoint that fits the model exactly (said), or None."""
    own = model.state_dict()
    for label, candidate in state_dict_candidates(raw):
        sd = _prepare(candidate, own, model)
        if not any(_problems(sd, own)):
            logger.warning(f"checkpoint {path!r}: took {label} ({len(candidate)} tensors), the part that fits {arch}")
            return sd
    return None


def _candidates_summary(raw, model: nn.Module) -> str:
    own = model.state_dict()
    rows = []
    for label, candidate in state_dict_candidates(raw):
        missing, unexpected, shapes = _problems(_prepare(candidate, own, model), own)
        rows.append(
            f"    {label}: {len(candidate)} tensors; {len(missing)} missing, {len(unexpected)} foreign, "
            f"{len(shapes)} of another shape"
        )
    return "\n".join(rows[:12]) + ("\n    ..." if len(rows) > 12 else "")


def _prepare(sd: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """What is harmless, tolerated: common prefixes, missing BN counters, an RGB first conv for a 1-channel model."""
    sd = _strip_prefixes(dict(sd), own)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    wkey = f"{first_conv}.weight" if first_conv else None
    if wkey in sd and wkey in own and sd[wkey].shape[1] != own[wkey].shape[1] and sd[wkey].ndim == 4:
        from timm.models import adapt_input_conv

        sd[wkey] = adapt_input_conv(own[wkey].shape[1], sd[wkey])
    return sd


def _read_checkpoint(path: str):
    """The checkpoint's top-level object (a dict of tensors, or a dict that holds one), errors said plainly."""
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
            raise CheckpointError(
                f"{path!r} is not a readable safetensors file (corrupt or truncated?): {err}"
            ) from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"{path!r} holds Python objects besides tensors, which torch.load(weights_only=True) refuses to run. "
                f"If you trust the file, re-save only its state dict. ({err})"
            ) from err
        except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise CheckpointError(
                f"{path!r} is not a readable PyTorch checkpoint (corrupt or truncated?): {err}"
            ) from err
    return obj


def _strip_prefixes(sd: Dict[str, torch.Tensor], model_keys) -> Dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if not set(sd) & set(model_keys) and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
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

    Tolerated: wrapper dicts (``model`` / ``state_dict``), ``module.``-style prefixes, the one part of another KD
    codebase's checkpoint that fits (``{"model": {"module.student.conv1.weight": ...}}``), missing BN
    ``num_batches_tracked`` (PyTorch 0.4-era checkpoints), an RGB first conv loaded into a 1-channel
    model (channels summed, as timm does for pretrained weights).
    """
    own = model.state_dict()
    raw = _read_checkpoint(path)  # read once: the usual layout first, then every part of it
    sd = _prepare(_state_dict_of(raw, path), own, model)
    missing, unexpected, shapes = _problems(sd, own)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    if (missing or unexpected) and (picked := _pick_candidate(raw, path, model, arch)) is not None:
        sd, missing, unexpected, shapes = picked, [], [], []  # another codebase's layout: the part that fits
    if missing or unexpected or shapes:
        head = (
            {f"{n}.weight" for n in [(model.pretrained_cfg or {}).get("classifier")] if n}
            if hasattr(model, "pretrained_cfg")
            else set()
        )
        if (
            not missing
            and not unexpected
            and shapes
            and all(s.split(":")[0] in head | {h[:-6] + "bias" for h in head} for s in shapes)
        ):
            n_ckpt = sd[next(iter(head))].shape[0]
            raise CheckpointError(
                f"class-count mismatch: {path!r} has a {n_ckpt}-class classifier, the {arch} model was built with "
                f"{own[next(iter(head))].shape[0]} classes. Build it with num_classes={n_ckpt}, or use a checkpoint "
                "trained on your label set."
            )
        lines = [f"checkpoint {path!r} does not fit {arch}:"]
        for title, items in (
            ("missing from the checkpoint", missing),
            ("not in the model", unexpected),
            ("shape mismatch", shapes),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        zoo = _matching_zoo_models(sd.keys())
        if zoo:
            lines.append(f"  its keys match the CIFAR-zoo architecture(s): {', '.join(zoo)}")
        lines.append("  no part of it fits (prefixes module. / student. / model. and nested dicts were tried):")
        lines.append(_candidates_summary(raw, model))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    return model


def checkpoint_in_chans(architecture: str, path: str) -> Optional[int]:
    """Input channels of the first convolution in ``path`` (a checkpoint for the timm ``architecture``), or None:
    a grayscale teacher given as an architecture and a file is built for one channel, as it was trained."""
    from timm.models import get_pretrained_cfg_value

    first = get_pretrained_cfg_value(architecture, "first_conv")
    if not first:
        return None
    for key, value in read_state_dict(path).items():
        if (key == f"{first}.weight" or key.endswith(f".{first}.weight")) and value.ndim == 4:
            return int(value.shape[1])
    return None


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


def _read_json(path: str) -> dict:
    """A JSON file of a model directory, or an error naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path!r} is not valid JSON (truncated or edited by hand?): {err}") from err


def _load_directory(path: str) -> nn.Module:
    """A model directory, every file it holds that cannot be read named (a truncated ``model.safetensors``, a
    config that is not JSON) instead of a library's traceback."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{path!r} has no config.json: not a directory saved by hf_mkcd, transformers or timm")
    cfg = _read_json(cfg_path)
    for name in os.listdir(path):  # the weights, checked before a library reads them (its error names no file)
        if name.endswith(".safetensors"):
            _check_safetensors(os.path.join(path, name))
    for name in ("preprocessor_config.json", "generation_config.json"):
        if os.path.isfile(os.path.join(path, name)):
            _read_json(os.path.join(path, name))
    try:
        return _load_directory_files(path, cfg)
    except (CheckpointError, ValueError, ImportError):
        raise
    except Exception as err:  # a library's failure on a file it could not parse: name the directory and the cause
        raise CheckpointError(
            f"the model directory {path!r} could not be loaded ({type(err).__name__}: {str(err)[:300]}); check that "
            "its files were copied whole (re-save or re-download it)"
        ) from err


def _check_safetensors(path: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            if keys:  # reading the last tensor reaches the end of the file: a truncated one fails here
                f.get_slice(keys[-1])[...]
    except Exception as err:
        raise CheckpointError(
            f"{path!r} is not a readable safetensors file (truncated or corrupt? {os.path.getsize(path):,} bytes): "
            f"{err}. Re-save or re-download it."
        ) from err


def _load_directory_files(path: str, cfg: dict) -> nn.Module:
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
            "label_names": [c.id2label[i] for i in range(c.num_labels)],
            **({"mean": tuple(c.image_mean), "std": tuple(c.image_std)} if c.image_mean and c.image_std else {}),
        }
        return backbone
    if "architecture" in cfg:
        create_timm_model(cfg["architecture"], num_classes=0)  # clear error if timm does not know the name
        if "pretrained_cfg" in cfg:  # timm's own Hub layout (save_for_hf)
            return timm.create_model(f"local-dir:{path}", pretrained=True)
        from transformers import TimmWrapperForImageClassification

        return TimmWrapperForImageClassification.from_pretrained(path).timm_model
    return _load_transformers_classifier(path, cfg)


def _load_transformers_classifier(path: str, cfg: dict) -> nn.Module:
    """A transformers image classifier saved with ``save_pretrained`` (ViT, ResNet, ConvNeXt, Swin...), behind
    timm's interface; its image processor, if saved beside it, gives the input size and normalisation."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from .teacher import TransformersTeacher

    model_type = cfg.get("model_type")
    try:
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForImageClassification.from_pretrained(path, config=config)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(
            f"{path!r}: config.json (model_type {model_type!r}) is neither an hf_mkcd student, a timm model, nor a "
            f"transformers image classifier that AutoModelForImageClassification loads ({type(err).__name__}: "
            f"{str(err)[:200]})"
        ) from err
    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError):  # no preprocessor_config.json: sizes from the config, stats measured
        processor = None
    return TransformersTeacher(model, processor)


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
            "hf_mkcd/transformers/timm, or a timm / CIFAR-zoo name with a checkpoint file (--teacher_checkpoint "
            "path.pth)."
        ) from err
    return _load_directory(local)


def load_teacher(
    name_or_path: str,
    checkpoint: Optional[str] = None,
    num_classes: Optional[int] = None,
    allow_random_init: bool = False,
    **model_kwargs,
) -> nn.Module:
    """Return a frozen timm classifier (eval mode, ``requires_grad=False``).

    Raises before anything trains if the teacher's classifier predicts a different number of classes
    than ``num_classes`` (the dataset's).
    """
    from .data import looks_like_path

    if looks_like_path(name_or_path) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(
            f"teacher {name_or_path!r} does not exist: give a directory saved by hf_mkcd / transformers / timm, a timm "
            "or CIFAR-zoo name with --teacher_checkpoint, or a Hub id (org/name)"
        )
    name_or_path = os.path.expanduser(name_or_path)
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
            model_kwargs.setdefault("in_chans", checkpoint_in_chans(name_or_path, checkpoint))
        teacher = create_timm_model(name_or_path, **{k: v for k, v in model_kwargs.items() if v is not None})
        if checkpoint is not None:
            load_state_dict_file(teacher, checkpoint)
    elif os.path.isfile(name_or_path):
        raise ValueError(
            f"{name_or_path!r} is a file: give the architecture as the teacher and the file as its checkpoint"
        )
    elif "/" in name_or_path and ":" not in name_or_path and not name_or_path.startswith((".", "/")):
        teacher = _load_from_hub(name_or_path)
    else:
        create_timm_model(name_or_path)  # raises with close matches
        raise AssertionError("unreachable")
    if num_classes is not None and hasattr(teacher, "get_classifier"):
        check_num_classes(
            **{f"teacher {name_or_path!r}": teacher_linear_head(teacher).out_features, "dataset": num_classes}
        )
    return teacher.eval().requires_grad_(False)


PRETRAINED_DEFAULT = ("true", "timm", "default")  # --student_pretrained true: timm's default weights of the student


def _hub_download_hint(hub_id: Optional[str], what: str) -> str:
    if not hub_id:
        return f"download {what} on a machine with access"
    return (
        f"on a machine with access, `hf download {hub_id} --local-dir {hub_id.split('/')[-1]}`, copy that directory "
        f"here and pass it (or the model.safetensors inside)"
    )


def _timm_pretrained(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` from the Hub, or from the local cache when it cannot be reached;
    a clear error naming what to download otherwise."""
    from timm.models import get_pretrained_cfg

    hub_name = name[len("hf-hub:") :] if name.startswith("hf-hub:") else None
    cfg = None if hub_name else get_pretrained_cfg(name)
    if cfg is not None and not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(
            f"--student_pretrained: timm has no pretrained weights for {name!r} (the CIFAR zoo has none); give a "
            "weights file or a directory (e.g. a plain student saved by scripts/train_teacher.py), or leave it unset"
        )
    hub_id = hub_name or (cfg.hf_hub_id if cfg is not None else None)
    try:
        if hub_reachable():
            return timm.create_model(name, pretrained=True, **kwargs)
        with offline_mode():
            return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # not cached and no Hub: name the download
        raise HubUnavailableError(
            f"--student_pretrained {name!r}: the weights are not in the local cache and the Hugging Face Hub cannot "
            f"be reached ({unreachable_reason()}; {type(err).__name__}). Offline, "
            + _hub_download_hint(hub_id, "the weights")
            + " with --student_pretrained PATH."
        ) from err


def pretrained_source_kind(source: str, architecture: str) -> tuple:
    """``(kind, name)`` of a ``--student_pretrained`` value, from the string alone: ``("path", path)``,
    ``("timm", tag)`` (timm's default weights of ``architecture`` or a tag of it) or ``("hub", "hf-hub:org/name")``."""
    from timm.models import get_arch_name

    from .data import looks_like_path

    expanded = os.path.expanduser(source)
    if os.path.exists(expanded):
        return "path", expanded
    if looks_like_path(source) or source.endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt")):
        raise FileNotFoundError(
            f"--student_pretrained {source!r} does not exist: give a weights file (.safetensors / .pth), a saved "
            "model directory, `true` (timm's default weights), a timm tag (resnet18.a1_in1k) or a Hub id"
        )
    if source.lower() in PRETRAINED_DEFAULT:
        return "timm", architecture
    if source.startswith("hf-hub:") or ("/" in source and ":" not in source):
        return "hub", source if source.startswith("hf-hub:") else f"hf-hub:{source}"
    if timm.is_model(source):
        if get_arch_name(source) != get_arch_name(architecture):
            raise ValueError(
                f"--student_pretrained {source!r} holds weights of {get_arch_name(source)!r}, the student is "
                f"{architecture!r}: choose weights of the student's architecture (or that architecture as the student)"
            )
        return "timm", source
    raise ValueError(
        f"--student_pretrained {source!r} is neither a path, `true`, a timm tag of {architecture!r} (e.g. "
        f"{architecture}.<tag>: timm.list_pretrained('{architecture}*') lists them) nor a Hub id (org/name)"
    )


def pretrained_stats(source: str, architecture: str) -> Optional[tuple]:
    """``(mean, std)`` the weights were trained with, where it can be read without loading them (a timm tag, a
    directory in timm's layout), else None: a plain run of a pretrained student normalises as its weights expect."""
    kind, name = pretrained_source_kind(source, architecture)
    cfg = None
    if kind == "timm":
        from timm.models import get_pretrained_cfg

        pcfg = get_pretrained_cfg(name)
        cfg = pcfg.to_dict() if pcfg is not None else None
    elif kind == "path" and os.path.isfile(os.path.join(name, "config.json")):
        with open(os.path.join(name, "config.json")) as f:
            cfg = json.load(f).get("pretrained_cfg")
    if cfg and cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None


def _is_student_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type") == MKCDStudentForImageClassification.config_class.model_type
    except (OSError, ValueError):
        return False


def load_student_pretrained(backbone: nn.Module, source: str, architecture: str) -> str:
    """Initialise a student's timm ``backbone`` from pretrained weights, as ``timm.create_model(pretrained=True,
    num_classes=N)`` does: every weight but the classifier loaded, the classifier kept at its fresh initialisation
    where the weights' head predicts another number of classes (or the student reuses the teacher's head), the first
    convolution adapted to the student's channels. Weights that do not fit the architecture are refused, naming the
    keys. Returns what was loaded, for the log and the card."""
    kind, name = pretrained_source_kind(source, architecture)
    if kind == "path" and os.path.isdir(name) and _is_student_dir(name):  # any hf_mkcd student: its backbone
        sd = MKCDStudentForImageClassification.from_pretrained(name).backbone.state_dict()
    elif kind == "path" and os.path.isdir(name):
        donor = _load_directory(name)
        if not hasattr(donor, "get_classifier") or type(donor).__name__ == "TransformersTeacher":
            raise ValueError(f"--student_pretrained {source!r}: the directory holds no timm model of {architecture}")
        sd = donor.state_dict()
    elif kind == "path":
        sd = read_state_dict(name)
    else:
        sd = _timm_pretrained(name).state_dict()
    own = backbone.state_dict()
    sd = _prepare(sd, own, backbone)
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or ""
    head_keys = {k for k in set(sd) | set(own) if classifier and (k == classifier or k.startswith(classifier + "."))}
    head_kept = bool(head_keys) and all(k in sd and k in own and sd[k].shape == own[k].shape for k in head_keys)
    if not head_kept:  # another class count, or the teacher's head: the student's own classifier starts fresh
        sd = {k: v for k, v in sd.items() if k not in head_keys}
    missing, unexpected, shapes = _problems(sd, own)
    missing = [k for k in missing if k not in head_keys]
    if missing or shapes:
        lines = [f"--student_pretrained {source!r} does not fit the student {architecture}:"]
        for title, items in (("missing from the weights", missing), ("shape mismatch", shapes)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        lines.append("  give weights of the student's architecture (timm.list_pretrained lists timm's)")
        raise CheckpointError("\n".join(lines))
    if unexpected:  # more than the student builds (e.g. the zoo's 1x1 expansion the projector does not read)
        logger.warning(
            f"--student_pretrained: {len(unexpected)} weight(s) not used, the student does not build them: "
            + ", ".join(unexpected[:6])
            + (" ..." if len(unexpected) > 6 else "")
        )
        sd = {k: v for k, v in sd.items() if k in own}
    backbone.load_state_dict(sd, strict=False)
    described = f"{name if kind != 'timm' else 'timm:' + name} ({len(sd)} tensors"
    described += ", classifier kept)" if head_kept else ", classifier re-initialised)" if head_keys else ")"
    logger.info(f"student initialised from {described}")
    return described
