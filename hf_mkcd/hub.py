"""Talking to the Hugging Face Hub: a fast reachability check, and the local cache when it cannot be reached.

Without ``HF_HUB_OFFLINE``, the Hub clients retry an unreachable endpoint for about half a minute
before failing. Every Hub path of hf_mkcd asks :func:`hub_reachable` first (one TCP connection with a
short timeout to ``HF_ENDPOINT``): when the Hub does not answer, a copy in the local cache is used at
once (:func:`offline_mode`), and without one the error names the offline choices.
"""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlparse

from .run_dir import STATE_NAME, RunDirectory

CONNECT_TIMEOUT_S = 3.0


class HubUnavailableError(RuntimeError):
    """A Hub id was given but the Hub cannot be reached (offline, no network)."""


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when the Hub endpoint accepts a TCP connection within ``timeout`` (False in offline mode)."""
    if is_offline():
        return False
    url = urlparse(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def offline_mode():
    """Run Hub clients (huggingface_hub, datasets, transformers) against the local cache only."""
    import huggingface_hub.constants as hub_constants

    targets = [(hub_constants, "HF_HUB_OFFLINE")]
    try:
        import datasets.config as datasets_config

        targets += [(datasets_config, "HF_HUB_OFFLINE"), (datasets_config, "HF_DATASETS_OFFLINE")]
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    saved = [(module, name, getattr(module, name)) for module, name in targets]
    env = os.environ.get("HF_HUB_OFFLINE")
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        os.environ["HF_HUB_OFFLINE"] = "1"
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def unreachable_reason() -> str:
    return (
        "offline mode is on (HF_HUB_OFFLINE)"
        if is_offline()
        else f"{endpoint()} did not answer within {CONNECT_TIMEOUT_S:g} s"
    )


PUSHED_PATTERNS = ["*.json", "*.safetensors", "*.py", "README.md", "*.png", "run_config.yaml", "timm/*"]
NOT_PUSHED = ["checkpoint-*/*", ".*", "*/.*", "training_args.bin", "*.pt", "*.pth", STATE_NAME]


def push_run(
    output_dir: str,
    repo_id: str,
    private: bool = False,
    token=None,
    vanilla_dir=None,
    commit_message: str = "Upload a student distilled with hf_mkcd",
) -> str:
    """Publish a finished run: weights, config, model code, image processor, the model card and its training
    curves, ``run_config.yaml``, ``all_results.json``. Fails fast, in one line, when the Hub cannot be reached;
    the local outputs are left as they are."""
    from .model_card import write_student_card

    status = (RunDirectory(output_dir, fingerprint={}).read_state() or {}).get("status")
    if status != "finished":
        raise ValueError(f"{output_dir!r} is not a finished run (status {status!r}): only finished runs are pushed")
    write_student_card(output_dir, repo_id, vanilla_dir)  # the card travels with the outputs, pushed or not
    if not hub_reachable():
        raise HubUnavailableError(
            f"cannot push {output_dir} to {repo_id}: the Hugging Face Hub cannot be reached "
            f"({unreachable_reason()}); the run is saved locally, push it later with "
            f"scripts/push_to_hub.py {output_dir} --hub_model_id {repo_id}"
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=output_dir,
        repo_id=url.repo_id,
        allow_patterns=PUSHED_PATTERNS,
        ignore_patterns=NOT_PUSHED,
        commit_message=commit_message,
    )
    return str(url)
