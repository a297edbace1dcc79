"""Reaching the Hugging Face hub, or knowing fast that it cannot be reached.

Without network, ``huggingface_hub`` retries every request with back-off (1, 2, 4, 8, 16 s) for each file a model
might have, so a missing backbone or depth model failed only after one to two minutes. :func:`hub_session` checks
the endpoint once with a short TCP connect and, when it is unreachable, switches the hub to offline mode for the
call: a model in the local cache still loads, a missing one fails at once. ``HF_HUB_OFFLINE=1`` skips the check.

:func:`download_hint` is the advice every "weights not found" error gives: the ``hf download`` command (the current
CLI of ``huggingface_hub``) and the option that takes the downloaded file at each entry point.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")


def offline_requested() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the host of ``url`` opens in time."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint ($HF_ENDPOINT, default huggingface.co:443) opens in time."""
    return host_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


@contextlib.contextmanager
def hub_session() -> Iterator[bool]:
    """Yields whether the hub will be asked over the network; offline (cache only) when unreachable."""
    if offline_requested():
        yield False
        return
    if hub_reachable():
        yield True
        return
    import huggingface_hub.constants as constants  # only when a model is actually loaded

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub, timm and transformers
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = before


def download_hint(repo_id: str, *, filename: str | None = None) -> str:
    """How to fetch ``repo_id`` elsewhere and hand it over, for every entry point."""
    target = f"{filename} " if filename else ""
    return (
        f"on a machine with network run `hf download {repo_id} {target}--local-dir <dir>` (or fetch the file "
        f"named above), copy it here and pass it: `python -m depthg prep knn --weights <file>`, "
        f"`python -m depthg train model.weights=<file>` / `eval ... model.weights=<file>`, "
        f"`papermill ... -p weights <file>` for the notebooks; or copy a filled Hugging Face cache "
        f"($HF_HOME, default ~/.cache/huggingface). Set HF_HUB_OFFLINE=1 to skip the network check."
    )
