"""Who owns an output directory, and what a rerun into it may do.

Every run records in ``<output_dir>/run_state.json`` a *fingerprint* of everything that changes its result
(method and its hyper-parameters, teacher identity and weights hash, student and projector, dataset and
preprocessing, optimisation, length, seed) and a status (``running``, ``failed``, ``finished``). Before
anything is written, :meth:`RunDirectory.open` decides:

* an empty or missing directory: a new run;
* the same fingerprint: resume from the newest complete checkpoint (a finished run is reported, not
  retrained);
* another fingerprint: refused, naming the fields that differ and the ways out: a new ``--output_dir``,
  ``--overwrite_output_dir`` to start over, or ``--resume_from_checkpoint`` with ``--allow_changes
  field,...`` to continue with named changes (a longer schedule, say);
* files no hf_mkcd run wrote (a teacher, another tool's outputs): refused.

A lock file keeps a second process out of a directory in use; a lock left by a killed process on this
host is detected and taken over. ``run_config.yaml`` and the state are written only after these checks.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import socket
import zipfile
from dataclasses import asdict
from typing import Iterable, Optional

from safetensors.torch import load_file

logger = logging.getLogger("hf_mkcd")

STATE_NAME = "run_state.json"
DISTILLER_WEIGHTS_NAME = "distiller.safetensors"  # a method's own state, beside the student's weights
LOCK_NAME = ".hf_mkcd.lock"
# settings that do not change what a run computes: they may differ between a run and its resumption
NOT_FINGERPRINTED = {
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "allow_changes",
    "logging_steps",
    "logging_dir",
    "logging_strategy",
    "logging_first_step",
    "logging_nan_inf_filter",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "vanilla_dir",
    "save_only_model",
    "report_to",
    "disable_tqdm",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "teacher_cache",
    "teacher_cache_dtype",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "hub_strategy",
    "hub_token",
    "per_device_eval_batch_size",
    "eval_accumulation_steps",
    "run_name",
    "do_eval",
    "do_predict",
    "log_level",
    "log_level_replica",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "include_for_metrics",
    "max_eval_samples",
    "eval_split",
    "test_split",
    "local_rank",
    "ddp_backend",
    "ddp_timeout",
    "use_cpu",
    "do_train",
    "dataloader_drop_last",
    "device_data",
    "skip_memory_metrics",
    "include_num_input_tokens_seen",
    "hub_revision",
    "trackio_space_id",
}


class RunDirectoryError(ValueError):
    """The output directory belongs to another run, is in use, or holds foreign files."""


def _plain(value):
    if hasattr(value, "value"):  # enums
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def run_fingerprint(model_args, data_args, training_args, teacher_sha256: Optional[str]) -> dict:
    """The settings a run's result depends on, as plain values."""
    fields = {}
    for config in (model_args, data_args):
        fields.update({k: _plain(v) for k, v in asdict(config).items()})
    fields.update({k: _plain(v) for k, v in training_args.to_dict().items()})
    fields = {k: v for k, v in fields.items() if k not in NOT_FINGERPRINTED and not k.startswith(("hub_", "push_"))}
    fields["teacher_sha256"] = teacher_sha256
    return fields


def differences(old: dict, new: dict) -> list:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    def __init__(self, output_dir: str, fingerprint: dict, is_main: bool = True):
        self.path, self.fingerprint, self.is_main = output_dir, fingerprint, is_main
        self.state_path = os.path.join(output_dir, STATE_NAME)
        self.lock_path = os.path.join(output_dir, LOCK_NAME)
        self.locked = False

    # -- the decision -----------------------------------------------------------------------------------
    def read_state(self) -> Optional[dict]:
        if not os.path.isfile(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirectoryError(
                f"{self.state_path} is unreadable ({err}): pass --overwrite_output_dir to start over, "
                "or another --output_dir"
            ) from err

    def decide(
        self,
        overwrite: bool,
        resume_from_checkpoint: Optional[str],
        allow_changes: Iterable[str],
        unknown: Iterable[str] = (),
    ) -> str:
        """``new``, ``resume``, ``finished`` or ``overwrite``; raises when the directory is not this run's.
        ``unknown``: fingerprint fields not known yet (the teacher's weights before it is loaded), left out of the
        comparison, so everything else is checked before anything expensive runs."""
        entries = [e for e in os.listdir(self.path) if e != LOCK_NAME] if os.path.isdir(self.path) else []
        if not entries:
            return "new"
        if overwrite:
            return "overwrite"
        state = self.read_state()
        if state is None:
            shown = ", ".join(sorted(entries)[:6]) + (" ..." if len(entries) > 6 else "")
            raise RunDirectoryError(
                f"{self.path!r} holds files that no hf_mkcd run wrote ({shown}): it may be a teacher or another tool's "
                "output. Choose another --output_dir, or pass --overwrite_output_dir to replace its contents."
            )
        changed = [k for k in differences(state.get("fingerprint", {}), self.fingerprint) if k not in set(unknown)]
        allowed = set(allow_changes or ())
        if changed and not (resume_from_checkpoint and set(changed) <= allowed):
            lines = [f"  {k}: {state['fingerprint'].get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed]
            raise RunDirectoryError(
                f"{self.path!r} holds another run (status {state.get('status')!r}); this command differs in:\n"
                + "\n".join(lines)
                + "\nWays out: a new --output_dir; --overwrite_output_dir to start over; or "
                f"--resume_from_checkpoint {self.path}/checkpoint-N --allow_changes {' '.join(changed)} to continue "
                "that run "
                "with these changes."
            )
        if changed:
            logger.warning(f"continuing {self.path} with the changes you allowed: {', '.join(changed)}")
        if state.get("status") == "finished" and not changed and not resume_from_checkpoint:
            return "finished"  # an explicit --resume_from_checkpoint continues it instead
        return "resume"

    # -- ownership ----------------------------------------------------------------------------------------
    def lock(self) -> None:
        if not self.is_main:
            return
        os.makedirs(self.path, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._lock_holder()
                if holder and holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    logger.warning(f"removing the stale lock of process {holder.get('pid')} (killed?) on {self.path}")
                    os.remove(self.lock_path)
                    continue
                raise RunDirectoryError(
                    f"{self.path!r} is in use by process {holder.get('pid') if holder else '?'} on "
                    f"{holder.get('host') if holder else '?'} since {holder.get('since') if holder else '?'}. "
                    f"Wait for it, use another --output_dir, or delete {self.lock_path} if that process is gone."
                )
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.locked = True
            return

    def _lock_holder(self) -> Optional[dict]:
        try:
            with open(self.lock_path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None

    def unlock(self) -> None:
        if self.locked:
            try:
                os.remove(self.lock_path)
            except FileNotFoundError:
                pass
            self.locked = False

    def clear(self) -> None:
        """Remove everything but our lock (``--overwrite_output_dir``)."""
        if not self.is_main:
            return
        for entry in os.listdir(self.path):
            if entry == LOCK_NAME:
                continue
            full = os.path.join(self.path, entry)
            shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.remove(full)

    def write_state(self, status: str, **extra) -> None:
        if not self.is_main:
            return
        state = self.read_state() or {}
        state.update(extra)
        state.update(
            status=status, fingerprint=self.fingerprint, updated=datetime.datetime.now().isoformat(timespec="seconds")
        )
        atomic_write_json(self.state_path, state)


# -- files that are whole or absent ------------------------------------------------------------------------
def atomic_write_json(path: str, data, sort_keys: bool = False) -> None:
    """Write JSON through a temporary file renamed over ``path``: a reader sees the old file or the new one,
    never half of either, even if the writer is killed."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str, sort_keys=sort_keys)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- checkpoints: staged, renamed into place, checked before a resume -------------------------------------------
STAGING_PREFIX = ".staging-"


def fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def promote_staged(staging: str, run_dir: str, name: str) -> str:
    """Move ``staging/name``, written completely, to ``run_dir/name`` (replacing an earlier save of the same step)
    and flush it to disk; return the final path."""
    final = os.path.join(run_dir, name)
    fsync_tree(os.path.join(staging, name))
    if os.path.isdir(final):  # the same step saved by an earlier attempt
        shutil.rmtree(final)
    os.rename(os.path.join(staging, name), final)
    fsync_dir(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def checkpoint_problem(path: str, save_only_model: bool = False) -> Optional[str]:
    """What is missing or corrupt in a checkpoint directory, naming the file; None when it is complete."""
    if not os.path.isdir(path):
        return "no such directory"
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            json.load(f)["global_step"]
    except (OSError, ValueError, KeyError) as err:
        return f"trainer_state.json is missing or unreadable ({type(err).__name__})"
    weights = ["model.safetensors"] + (
        [DISTILLER_WEIGHTS_NAME] if os.path.exists(os.path.join(path, DISTILLER_WEIGHTS_NAME)) else []
    )
    for name in weights:
        try:
            load_file(os.path.join(path, name))
        except Exception as err:  # missing, truncated, not safetensors
            return f"{name} is missing or corrupt ({type(err).__name__}: {str(err)[:120]})"
    pickles = [] if save_only_model else ["optimizer.pt", "scheduler.pt"]
    pickles += [f for f in os.listdir(path) if f.startswith("rng_state") and f.endswith(".pth")]
    for name in pickles:
        full = os.path.join(path, name)
        try:
            with zipfile.ZipFile(full) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"{name} is corrupt (member {bad})"
        except (OSError, zipfile.BadZipFile) as err:
            return f"{name} is missing or corrupt ({type(err).__name__})"
    return None


def find_resumable_checkpoint(output_dir: str, save_only_model: bool = False) -> Optional[str]:
    """The newest complete ``checkpoint-N`` in ``output_dir``; incomplete ones are skipped, and said so."""
    steps = sorted(
        (int(m.group(1)), e)
        for e in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
        if (m := re.fullmatch(r"checkpoint-(\d+)", e)) and os.path.isdir(os.path.join(output_dir, e))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path, save_only_model)
        if problem is None:
            return path
        logger.warning(f"skipping incomplete checkpoint {path}: {problem}")
    return None
