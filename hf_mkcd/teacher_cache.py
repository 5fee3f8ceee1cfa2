"""The teacher-output cache: run the teacher once per (augmentation epoch, sample), reuse it everywhere.

Training augmentation is a pure function of (seed, epoch, sample index) (``hf_mkcd.data``), so what the
frozen teacher says about a training sample is a pure function of them too. The cache stores it in
memory-mapped files, one directory per epoch::

    <dir>/fingerprint.json                 what the outputs depend on; any other run is refused
    <dir>/epoch_0003/main.logits.npy        (N, classes) float32
    <dir>/epoch_0003/main.logits.filled.npy (N,) uint8: row i is written
    <dir>/epoch_0003/strong.logits.npy      an extra view (MLKD)

and is filled while training (the first run computes and stores, every later one reads) or ahead of time
by ``scripts/cache_teacher.py``. Every student, method and seed that shares the data pipeline and the
teacher shares the cache, and a resumed run reads what the interrupted one wrote.

* What is cached: ``logits`` (float32: a cached run's losses are bit-identical to the uncached run's when
  the teacher ran on batches of the same size), ``pooled``, ``features`` (the pre-pool map) and the stage maps
  (``stages``, ``preact_stages``: one file per stage, ``main.stages.2.npy``) in ``map_dtype`` (float16 by default:
  relative error about 1e-3), so a method that reads stage maps (FitNet, AT, SP, OFD, ReviewKD, AB, MKCD's
  mid-level term) costs what KD costs once the cache is filled. The run plan states the size before the first step
  and a cache the disk cannot hold is refused.
* A row is read only when its ``filled`` flag is set, and the flag is written after the row: a run
  killed while writing leaves rows that are recomputed, never read half-written; directories are
  created under a temporary name and renamed.
* ``fingerprint.json`` holds the teacher's weights hash, the dataset's fingerprint and preprocessing
  (columns, subset, size, channels, normalisation, augmentation, views, seed) and the precision the
  teacher ran in; a cache made for anything else is refused with the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from .run_dir import atomic_write_json

logger = logging.getLogger("hf_mkcd")

CACHEABLE = ("logits", "pooled", "features", "stages", "preact_stages")
LISTS = ("stages", "preact_stages")  # outputs that are lists of maps: one file per map
FINGERPRINT_NAME = "fingerprint.json"
CACHE_VERSION = 1


class TeacherCacheMismatch(ValueError):
    """The cache directory was made for another teacher, dataset or preprocessing."""


def tensor_hash(state_dict: Dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and bytes (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_fingerprint(teacher: torch.nn.Module, train_dataset, precision: str) -> dict:
    """Everything the teacher's outputs on the training set depend on."""
    transform = (getattr(train_dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    if transform is None or not hasattr(transform, "describe"):
        raise ValueError(
            "the teacher cache needs a training set prepared by hf_mkcd.data.prepare_datasets "
            "(its augmentation must be a function of seed, epoch and sample index)"
        )
    return {
        "version": CACHE_VERSION,
        "teacher_sha256": tensor_hash(teacher.state_dict()),
        "teacher_architecture": (getattr(teacher, "pretrained_cfg", None) or {}).get(
            "architecture", type(teacher).__name__
        ),
        "dataset_fingerprint": getattr(train_dataset, "_fingerprint", None),
        "num_samples": len(train_dataset),
        "preprocessing": transform.describe(),
        "precision": precision,
    }


def _differences(a: dict, b: dict, prefix: str = "") -> list:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: cache {va!r} vs this run {vb!r}")
    return out


class TeacherCache:
    """Memory-mapped teacher outputs per (epoch, sample index). See the module docstring."""

    def __init__(self, root: str, fingerprint: dict, map_dtype: str = "float16", shapes: Optional[dict] = None):
        """``shapes``: the teacher's output shapes (``Pair.teacher_shapes``), which say how many stage maps there are;
        needed only to cache stage maps."""
        self._counts = {k: len(v) for k, v in (shapes or {}).items() if isinstance(v, list)}
        if map_dtype not in ("float16", "float32"):
            raise ValueError(f"teacher cache map_dtype must be float16 or float32, got {map_dtype!r}")
        self.root, self.fingerprint, self.map_dtype = root, fingerprint, map_dtype
        self.num_samples = int(fingerprint["num_samples"])
        os.makedirs(root, exist_ok=True)
        path = os.path.join(root, FINGERPRINT_NAME)
        if os.path.isfile(path):
            with open(path) as f:
                existing = json.load(f)
            diff = _differences(existing, fingerprint)
            if diff:
                raise TeacherCacheMismatch(
                    f"teacher cache {root!r} was made for another teacher or data pipeline:\n  "
                    + "\n  ".join(diff)
                    + "\nUse another --teacher_cache directory (or delete this one to rebuild it)."
                )
        else:
            atomic_write_json(path, fingerprint, sort_keys=True)
        self._open: Dict[tuple, tuple] = {}
        self.hits = self.misses = 0
        self._mirror: Optional[dict] = None  # a complete epoch held in device memory (mirror)

    # -- layout ---------------------------------------------------------------------------------------
    def _epoch_dir(self, epoch: int) -> str:
        return os.path.join(self.root, f"epoch_{int(epoch):04d}")

    def _dtype(self, key: str) -> str:
        return "float32" if key == "logits" else self.map_dtype

    def _parts(self, key: str) -> list:
        """The files one output is stored in: itself, or one per stage map (``stages.0``, ``stages.1``, ...)."""
        if key not in LISTS:
            return [key]
        if key not in self._counts:
            raise ValueError(f"caching {key!r} needs the teacher's stage shapes: TeacherCache(..., shapes=...)")
        return [f"{key}.{i}" for i in range(self._counts[key])]

    def _files(self, needs: Iterable[str], views: Iterable[str] = ()) -> list:
        """Every (view, file key) that ``needs`` is stored in."""
        return [(view, part) for view in ("main", *views) for key in needs for part in self._parts(key)]

    def _arrays(self, epoch: int, view: str, key: str, create_shape=None):
        """(values, filled) memmaps of one epoch/view/key; created (atomically) when ``create_shape`` is given."""
        handle = (epoch, view, key)
        if handle in self._open:
            return self._open[handle]
        directory = self._epoch_dir(epoch)
        values_path = os.path.join(directory, f"{view}.{key}.npy")
        filled_path = os.path.join(directory, f"{view}.{key}.filled.npy")
        if not os.path.isfile(filled_path):
            if create_shape is None:
                return None
            self._create(directory, view, key, create_shape)
        arrays = (np.load(values_path, mmap_mode="r+"), np.load(filled_path, mmap_mode="r+"))
        if len(self._open) > 8:  # keep the current epoch's handles; older ones are flushed and closed
            self.flush()
            self._open.clear()
        self._open[handle] = arrays
        return arrays

    def _create(self, directory: str, view: str, key: str, shape) -> None:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{view}.{key}.", dir=directory)
        try:
            np.lib.format.open_memmap(
                os.path.join(tmp, "values.npy"), mode="w+", dtype=self._dtype(key), shape=(self.num_samples, *shape)
            ).flush()
            np.lib.format.open_memmap(
                os.path.join(tmp, "filled.npy"), mode="w+", dtype=np.uint8, shape=(self.num_samples,)
            ).flush()
            # hard links never replace a file another process created (and may already have open); the values
            # file goes first, so a flags file only ever exists beside its values file
            for name, final in (("values.npy", f"{view}.{key}.npy"), ("filled.npy", f"{view}.{key}.filled.npy")):
                try:
                    os.link(os.path.join(tmp, name), os.path.join(directory, final))
                except FileExistsError:
                    pass  # another process made it first: same shape, zero-filled, as good as ours
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- reading and writing --------------------------------------------------------------------------
    @staticmethod
    def supports(needs: Iterable[str]) -> bool:
        return set(needs) <= set(CACHEABLE)

    def mirror(
        self, epoch: int, device, needs: Iterable[str], views: Iterable[str] = (), budget_bytes: Optional[int] = None
    ) -> tuple:
        """Hold a complete epoch's outputs in ``device`` memory, in the cache's own dtypes: a read is then a gather
        on the device (no file read, no host-device copy, no host synchronisation) and gives the same values as
        a read from the files. Only a complete epoch, and only within ``budget_bytes``. Returns (held, the epoch's
        size in bytes, or None for an incomplete epoch)."""
        needs, views = tuple(needs), tuple(views)
        if self._mirror is not None and self._mirror["epoch"] == epoch and self._mirror["device"] == device:
            return True, self._mirror["bytes"]
        self._mirror = None
        if not self.complete(epoch, needs, views):
            return False, None
        arrays = {(view, part): self._arrays(epoch, view, part)[0] for view, part in self._files(needs, views)}
        size = sum(a.nbytes for a in arrays.values())
        if budget_bytes is not None and size > budget_bytes:
            return False, size
        tensors = {k: torch.from_numpy(np.ascontiguousarray(a)).to(device) for k, a in arrays.items()}
        self._mirror = {"epoch": epoch, "device": device, "tensors": tensors, "bytes": size}
        return True, size

    def read(self, epoch: int, index: torch.Tensor, needs: Iterable[str], views: Iterable[str] = ()) -> Optional[dict]:
        """Every output for these samples, or None if any row is missing (then the teacher runs)."""
        m = self._mirror
        if m is not None and m["epoch"] == epoch:  # a gather where the epoch is held (mirror)
            index = index.to(m["device"], non_blocking=True)
            out: dict = {}
            for view in ("main", *views):
                target = out if view == "main" else out.setdefault(view, {})
                for key in needs:
                    parts = [m["tensors"][(view, p)].index_select(0, index).float() for p in self._parts(key)]
                    target[key] = parts if key in LISTS else parts[0]
            self.hits += len(index)
            return out
        idx = index.detach().cpu().numpy()
        out: dict = {}
        for view in ("main", *views):
            target = out if view == "main" else out.setdefault(view, {})
            for key in needs:
                parts = []
                for part in self._parts(key):
                    arrays = self._arrays(epoch, view, part)
                    if arrays is None or not arrays[1][idx].all():
                        self.misses += len(idx)
                        return None
                    parts.append(torch.from_numpy(np.asarray(arrays[0][idx], dtype=np.float32)))
                target[key] = parts if key in LISTS else parts[0]
        self.hits += len(idx)
        return out

    def write(
        self, epoch: int, index: torch.Tensor, outputs: dict, needs: Iterable[str], views: Iterable[str] = ()
    ) -> None:
        idx = index.detach().cpu().numpy()
        for view in ("main", *views):
            source = outputs if view == "main" else outputs[view]
            for key in needs:
                tensors = source[key] if key in LISTS else [source[key]]
                for part, tensor in zip(self._parts(key), tensors, strict=True):
                    values = tensor.detach().float().cpu().numpy()
                    data, filled = self._arrays(epoch, view, part, create_shape=values.shape[1:])
                    data[idx] = values.astype(data.dtype)
                    filled[idx] = 1  # after the values: a flag never points at a half-written row

    def complete(self, epoch: int, needs: Iterable[str], views: Iterable[str] = ()) -> bool:
        """Every row of ``epoch`` written (reads only the flags)."""
        for view, part in self._files(needs, views):
            arrays = self._arrays(epoch, view, part)
            if arrays is None or not arrays[1].all():
                return False
        return True

    def flush(self) -> None:
        for data, filled in self._open.values():
            data.flush()
            filled.flush()

    # -- planning ----------------------------------------------------------------------------------
    def bytes_per_sample(self, shapes: Dict[str, tuple], needs: Iterable[str], views: Iterable[str] = ()) -> int:
        per_view = sum(
            int(np.prod(shape)) * np.dtype(self._dtype(k)).itemsize + 1
            for k in needs
            for shape in (shapes[k] if k in LISTS else [shapes[k]])
        )
        return per_view * (1 + len(tuple(views)))

    def missing_epochs(self, epochs: Iterable[int], needs: Iterable[str], views: Iterable[str] = ()) -> list:
        missing = []
        files = self._files(needs, views)
        for e in epochs:
            if any(not os.path.isfile(os.path.join(self._epoch_dir(e), f"{v}.{k}.filled.npy")) for v, k in files):
                missing.append(e)
        return missing

    def plan(self, epochs: int, shapes: Dict[str, tuple], needs: Iterable[str], views: Iterable[str] = ()) -> int:
        """Print the size of what this run adds; refuse it when the disk cannot hold it. Returns bytes to add."""
        needs, views = tuple(needs), tuple(views)
        todo = self.missing_epochs(range(epochs), needs, views)
        per_epoch = self.bytes_per_sample(shapes, needs, views) * self.num_samples
        size = per_epoch * len(todo)
        free = shutil.disk_usage(self.root).free
        logger.info(
            f"teacher cache {self.root}: {', '.join(needs)} ({self.map_dtype} maps), {_mb(per_epoch)} per epoch; "
            f"{epochs - len(todo)} of {epochs} epochs present, this run adds up to {_mb(size)} "
            f"({_mb(free)} free)"
        )
        if size > 0.95 * free:
            raise ValueError(
                f"the teacher cache would need {_mb(size)} more at {self.root!r} and only {_mb(free)} are free: cache "
                "fewer outputs (pooled/features in float16: --teacher_cache_dtype float16), fewer epochs, or run "
                "without --teacher_cache"
            )
        return size


def _mb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
