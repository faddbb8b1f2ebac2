"""What identifies a model's outputs, for caches keyed by model: the content of its files (a local folder) or
its hub id and commit, plus the settings that change its outputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..paths import cache_dir

# What loading a local folder reads (top level only): weights and shards with their index (*.safetensors,
# *.bin, *.json), config and generation config, tokenizer files (tokenizer.json, tokenizer_config.json,
# special_tokens_map.json, vocab.json/vocab.txt, merges.txt, SentencePiece *.model, tiktoken files), chat
# templates (*.jinja, chat_template.json) and remote code (*.py).
MODEL_FILES = ("*.safetensors", "*.bin", "*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py")


def model_fingerprint(path: str, commit: str | None = None, *settings: Any) -> str:
    """What identifies a model's outputs, for caches keyed by model: for a local folder, the content of
    every file loading may read (:data:`MODEL_FILES`), so editing any of them changes it and an untouched
    copy elsewhere keeps it; for a hub id, the id and the ``commit`` of the revision loaded. ``settings``
    (dtype, length limit) are part of it.

    >>> model_fingerprint("/models/glm-4-9b", None, "torch.bfloat16", 8192)  # doctest: +SKIP
    '3f1c0e9a27d4b5c6'
    """
    folder = Path(path)
    if folder.is_dir():
        files = sorted({f for pattern in MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
        identity: list[Any] = [[f.name, file_digest(f)] for f in files]
    else:
        identity = [path, commit]
    key = json.dumps([identity, *settings], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


RACY_S = 2  # a file modified this recently may change again within its mtime tick: never memoise it


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content, memoised in ``$AUTOGLM_CACHE_DIR/file_digests.sqlite`` by path, size,
    mtime and inode, so multi-GB checkpoints are read once; any write changes the mtime and so misses the
    memo. A file modified within the last seconds is hashed but not memoised (git's "racy" rule): a second
    write within the same mtime tick would leave size and mtime unchanged."""
    import sqlite3
    import time

    st = path.stat()
    name, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
    memo = cache_dir() / "file_digests.sqlite"
    memo.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(memo, timeout=60)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, sha256 TEXT)")
        row = conn.execute("SELECT stamp, sha256 FROM digests WHERE path = ?", (name,)).fetchone()
        if row and json.loads(row[0]) == stamp:
            return row[1]
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if time.time_ns() - st.st_mtime_ns > RACY_S * 1_000_000_000:
            with conn:
                conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?)", (name, json.dumps(stamp), digest))
        return digest
    finally:
        conn.close()
