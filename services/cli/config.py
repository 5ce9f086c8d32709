"""Where a client finds its API key: REELSTREAM_API_KEY, else the local stack's key file (`make up`
keeps it in .run/api-key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

LOCAL_KEY_FILE: Final = Path(".run/api-key")


class NoApiKey(RuntimeError):
    pass


def api_key(root: Path | None = None) -> str:
    """The key from REELSTREAM_API_KEY, else from the local stack's key file under `root` (or the
    working directory)."""
    if key := os.environ.get("REELSTREAM_API_KEY", "").strip():
        return key
    path = (root or Path.cwd()) / LOCAL_KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise NoApiKey(
            f"no API key: set REELSTREAM_API_KEY, or bring the local stack up (`make up` writes {path})"
        ) from None


def auth_headers(root: Path | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key(root)}"}
