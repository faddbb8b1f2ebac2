"""The run directory's record: results.json (schema below), written atomically.

Schema 1::

    {"schema": 1, "task", "task_version", "model", "method", "status", "seed",
     "config": resolved config, "metrics": {name: value},
     "predictions": [{"id", "prediction", "target", "scores" | "output", ...}],
     "timings": {"load_s", "eval_s", "train_s", "tokens_per_s"},
     "cost": {"examples_scored", "tokens_processed"},
     "env": {"python", "platform", "torch", "transformers", "autoglm_bench", "device", "git_commit",
             "git_dirty"}}

``task_version`` (:func:`task_version`) is a digest of the task's resolved definition, so two runs of
"sst2" made from different task files (or a changed verbaliser) can be told apart; ``git_commit`` is the
checkout's HEAD with ``-dirty`` when tracked files outside results/ differed from it, and ``git_dirty``
says the same as a boolean. A sweeper that re-ran a trial marks the older job's file ``"status": "superseded"`` (see
hydra_plugins/autoglm_optuna_sweeper), and the report skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import uuid
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
# A key names a credential when its last word (words split at "_", "-", "." and camelCase humps, case
# ignored) is one of _SECRET_WORDS, or its last two words are one of _SECRET_PAIRS: hf_token, token,
# api_key, WANDB_API_KEY, password, client_secret, aws_secret_access_key. Keys that merely mention tokens
# (max_new_tokens, num_virtual_tokens, prompt_tokens) are settings and are kept.
_SECRET_WORDS = {"token", "password", "passwd", "secret", "apikey", "credential", "credentials"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"), ("auth", "key")}
# Values that look like credentials wherever they appear: Hugging Face, OpenAI-style, GitHub and Slack
# tokens and AWS access key ids (their documented prefixes and a long random tail), and the password of a
# URL (an RDB storage URL). Hex digests are not matched: a model revision is one.
_SECRET_VALUE = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b"
)
_URL_PASSWORD = re.compile(r"(?<=://)([^/:@\s]*):([^/@\s]+)@")
REDACTED = "<redacted>"


def is_secret_key(key: str) -> bool:
    """Whether a config key names a credential (see _SECRET_WORDS).

    >>> is_secret_key("hf_token"), is_secret_key("WANDB_API_KEY"), is_secret_key("max_new_tokens")
    (True, True, False)
    """
    words = [w for w in re.split(r"[_\-.\s]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w]
    return bool(words) and (words[-1] in _SECRET_WORDS or tuple(words[-2:]) in _SECRET_PAIRS)


def redact(value: Any) -> Any:
    """Replace credentials anywhere in a nested config with "<redacted>": the values of keys that name a
    credential, and in every string the parts that look like one (a token, a URL's password).

    >>> redact({"hf_token": "abc", "max_new_tokens": 64, "storage": "postgresql://me:pw@db/x"})
    {'hf_token': '<redacted>', 'max_new_tokens': 64, 'storage': 'postgresql://me:<redacted>@db/x'}
    """
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\1:{REDACTED}@", _SECRET_VALUE.sub(REDACTED, value))
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over ``path``. The file gets
    the mode of any file the process creates (0644 under umask 022), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def task_version(config: dict[str, Any]) -> str | None:
    """A 12-hex digest of the resolved ``task`` node of a run's config (the task file after its defaults
    and any ``task.*`` overrides), or None when the config has no task.

    >>> task_version({"task": {"name": "sst2", "choices": ["negative", "positive"]}})
    'c9c6106bbe36'
    """
    task = config.get("task")
    if not isinstance(task, dict):
        return None
    canonical = json.dumps(task, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested config by dotted key (lists and empty groups are leaves).

    >>> flatten_config({"task": {"name": "sst2", "choices": ["a", "b"]}, "seed": 0})
    {'task.name': 'sst2', 'task.choices': ['a', 'b'], 'seed': 0}
    """
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """HEAD of the checkout the package runs from, with "-dirty" when tracked files changed, other than the
    committed tables in results/ (which no run reads: a table written by one sweeps script does not make
    the next script's runs dirty). None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
            cwd=root,
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
        "git_commit": (commit := git_commit()),
        "git_dirty": None if commit is None else commit.endswith("-dirty"),
    }


def write_results(run_dir: Path, result: dict[str, Any]) -> Path:
    """Check ``result`` carries every schema field, then write ``run_dir/results.json`` atomically, with the
    ``task_version`` of its config."""
    missing = [k for k in RESULT_FIELDS if k != "schema" and k not in result]
    if missing:
        raise ValueError(f"result lacks schema fields: {', '.join(missing)}")
    path = run_dir / "results.json"
    write_json_atomic(path, {"schema": SCHEMA_VERSION, "task_version": task_version(result["config"]), **result})
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
