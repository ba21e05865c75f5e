"""Whether the Hugging Face hub can be reached: one quick TCP connect, remembered per process."""

from __future__ import annotations

import os


def hub_unreachable(timeout_s: float = 3.0) -> str:
    """'' when the Hugging Face hub answers a TCP connect, else why not (one quick try, remembered per process)."""
    global _HUB_REASON
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""  # the hub is reached through a proxy: a direct connect says nothing
    if _HUB_REASON is None:
        import socket
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            _HUB_REASON = ""
        except OSError as e:
            _HUB_REASON = f"{host}:{port}: {e.strerror or type(e).__name__}"
    return _HUB_REASON


_HUB_REASON: str | None = None
