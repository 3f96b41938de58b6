"""Where degen keeps what it derives once and reuses: the user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DEGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/degen``, else ``~/.cache/degen``."""
    if os.environ.get("DEGEN_CACHE_DIR"):
        return Path(os.environ["DEGEN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "degen"
