"""A hub id that cannot be fetched fails at once, with one line.

Without a network, transformers retries each hub request with back-off (about half a minute) before raising an
OSError that lists URLs. A hub id is checked here first: a model already in the local hub cache loads as
usual; otherwise, in offline mode (``HF_HUB_OFFLINE=1``) it is refused without any request, and online the hub
gets one connection attempt of a few seconds before anything is downloaded.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from transformers import AutoConfig
from transformers.utils.hub import is_offline_mode

from fwsvd.io.quiet import quiet_transformers

#: Seconds the hub gets to accept a connection: enough for a slow link, short enough to answer within 5 s.
CONNECT_TIMEOUT = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def check_hub_model(model_id: str) -> None:
    """Nothing if ``model_id`` is in the local hub cache or the hub answers; else ValueError in one line."""
    if _cached(model_id):
        return
    advice = "use a local model directory or 'demo'"
    if is_offline_mode():
        raise ValueError(f"cannot load model {model_id!r}: it is not a local directory, it is not in the local hub "
                         f"cache, and the hub is switched off (HF_HUB_OFFLINE); {advice}")
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    parts = urlsplit(endpoint)
    host, port = parts.hostname or endpoint, parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"cannot load model {model_id!r}: it is not a local directory, and the Hugging Face hub "
                         f"({host}) cannot be reached ({reason}); {advice}") from None


def _cached(model_id: str) -> bool:
    """Whether the model's config is in the local hub cache (no request is made)."""
    try:
        with quiet_transformers():
            AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True
