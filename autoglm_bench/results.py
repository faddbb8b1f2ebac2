"""The run directory's record: results.json (schema below), written atomically.

Schema 1::

    {"schema": 1, "task", "model", "method", "status", "seed",
     "config": resolved config, "metrics": {name: value},
     "predictions": [{"id", "prediction", "target", "scores" | "output", ...}],
     "timings": {"load_s", "eval_s", "train_s", "tokens_per_s"},
     "cost": {"examples_scored", "tokens_processed"},
     "env": {"python", "platform", "torch", "transformers", "autoglm_bench", "device", "git_commit"}}
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .config import REPO_ROOT

SCHEMA_VERSION = 1
RESULT_FIELDS = (
    "schema",
    "task",
    "model",
    "method",
    "status",
    "seed",
    "config",
    "metrics",
    "predictions",
    "timings",
    "cost",
    "env",
)
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|auth)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Drop the values of keys that look like credentials, anywhere in a nested config."""
    if isinstance(value, dict):
        return {k: "<redacted>" if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_commit() -> str | None:
    """HEAD of the checkout the package runs from, with "-dirty" when tracked files changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def env_info(device: Any = None) -> dict[str, Any]:
    import torch
    import transformers

    from . import __version__

    name = str(device) if device is not None else "cpu"
    if device is not None and getattr(device, "type", "") == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "autoglm_bench": __version__,
        "device": name,
        "git_commit": git_commit(),
    }


def write_results(run_dir: Path, result: dict[str, Any]) -> Path:
    """Check ``result`` carries every schema field, then write ``run_dir/results.json`` atomically."""
    missing = [k for k in RESULT_FIELDS if k != "schema" and k not in result]
    if missing:
        raise ValueError(f"result lacks schema fields: {', '.join(missing)}")
    path = run_dir / "results.json"
    write_json_atomic(path, {"schema": SCHEMA_VERSION, **result})
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
