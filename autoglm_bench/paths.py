"""Where the harness keeps what it builds and caches: ``$AUTOGLM_CACHE_DIR`` (default ~/.cache/autoglm_bench)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: tiny models, tokenised training data, the request cache, file digests."""
    return Path(os.environ.get("AUTOGLM_CACHE_DIR", "~/.cache/autoglm_bench")).expanduser()
