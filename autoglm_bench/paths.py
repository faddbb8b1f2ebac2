"""Where the harness keeps what it builds and caches (``$AUTOGLM_CACHE_DIR``, default ~/.cache/autoglm_bench),
and how it writes it there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder: tiny models, generated tasks, tokenised training data, the request cache, file digests."""
    return Path(os.environ.get("AUTOGLM_CACHE_DIR", "~/.cache/autoglm_bench")).expanduser()


def write_once(target: Path, write: Callable[[Path], None]) -> Path:
    """``target``, written by ``write(staging_folder)`` unless it exists already. The staging folder is
    renamed into place, so a reader never sees a half-written folder and of two concurrent writers one
    wins while the other finds the folder ready.

    >>> write_once(cache_dir() / "toy" / key, lambda folder: (folder / "rows.jsonl").write_text(text))  # doctest: +SKIP
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        write(staging)
        try:
            staging.rename(target)
        except OSError:  # a concurrent writer won
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
