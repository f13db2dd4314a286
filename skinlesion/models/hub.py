"""The Hugging Face Hub, on machines that may have no route to it: a quick probe, cache-only
access, and a model folder from a repo id."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants

from .spec import ModelFolderError

HUB_FILES = ["*.json", "*.safetensors", "*.md", "*.png"]  # what a model folder holds


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub endpoint, so an offline machine fails in seconds instead
    of going through huggingface_hub's retries with back-off (a minute or more)."""
    if hub_constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; nothing to probe directly
    url = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_offline() -> Iterator[None]:
    """Cache-only Hub access for the duration (what HF_HUB_OFFLINE=1 does for a process)."""
    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/"))


def download(repo_id: str) -> Path:
    """The model folder of a Hub repo: from the Hub when it answers, else from the local cache
    (so HF_HUB_OFFLINE=1 works once downloaded); a clear error when neither has it."""
    from huggingface_hub import snapshot_download

    try:
        if hub_reachable():
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        with hub_offline():
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:
        raise ModelFolderError(f"could not get the model {repo_id!r} from the Hugging Face Hub or its "
                               f"local cache ({type(error).__name__}); check the name, the network, "
                               f"or pass a local folder") from None
