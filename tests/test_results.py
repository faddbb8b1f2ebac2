"""results.json is written atomically, records its provenance (task version, commit, dirty tree) and never
carries credentials."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess

import pytest

from autoglm_bench.results import env_info, git_commit, redact, task_version, write_json_atomic, write_results

from .conftest import REPO


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # fails half-way through serialising
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_write_gives_the_file_the_umask_mode(tmp_path, umask, mode):
    """Like every other file in a run directory (not mkstemp's 0600)."""
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
        write_json_atomic(tmp_path / "results.json", {"a": 2})  # replacing keeps it too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == mode
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 2}


def test_write_results_requires_every_schema_field(tmp_path):
    with pytest.raises(ValueError, match="predictions"):
        write_results(
            tmp_path,
            {
                "task": "t",
                "model": "m",
                "method": "evaluate",
                "status": "completed",
                "seed": 0,
                "config": {},
                "metrics": {},
                "timings": {},
                "cost": {},
                "env": {},
            },
        )
    assert not (tmp_path / "results.json").exists()


def test_redact_drops_credential_like_values():
    cfg = {
        "model": {"path": "x", "hf_token": "hf_abc", "token": "t", "revision": "0123456789abcdef" * 2 + "01234567"},
        "logger": {"api_key": "k", "WANDB_API_KEY": "w", "tags": ["a"], "secret": "s", "aws_secret_access_key": "a"},
        "db": [{"password": "p", "passwd": "q", "client_secret": "c"}],
    }
    assert redact(cfg) == {
        "model": {"path": "x", "hf_token": "<redacted>", "token": "<redacted>", "revision": cfg["model"]["revision"]},
        "logger": {
            "api_key": "<redacted>",
            "WANDB_API_KEY": "<redacted>",
            "tags": ["a"],
            "secret": "<redacted>",
            "aws_secret_access_key": "<redacted>",
        },
        "db": [{"password": "<redacted>", "passwd": "<redacted>", "client_secret": "<redacted>"}],
    }


def test_redact_keeps_harmless_keys_that_mention_tokens():
    """Generation length, virtual tokens, token counts: settings a result must record, not credentials."""
    cfg = {
        "task": {"generation": {"max_new_tokens": 64, "until": ["\n\n"]}},
        "peft": {"num_virtual_tokens": 16},
        "search": {"objectives": ["acc", "prompt_tokens"], "proposal": {"max_new_tokens": 48}},
        "cost": {"tokens_processed": 100},
        "model": {"tokenizer": "byte-level", "path": "THUDM/glm-4-9b-hf"},
    }
    assert redact(cfg) == cfg


def test_redact_drops_values_that_look_like_credentials():
    hf, openai, github = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ012345678", "sk-" + "A1b2" * 8, "ghp_" + "x1Y2" * 9
    cfg = {
        "task": {"options": {"auth": hf, "note": f"Bearer {openai}"}},
        "instructions": [github, "hf_style is fine", "sk-learn too"],
        "hpo": {"storage": "postgresql+psycopg2://bench:hunter2@db.example/optuna"},
    }
    assert redact(cfg) == {
        "task": {"options": {"auth": "<redacted>", "note": "Bearer <redacted>"}},
        "instructions": ["<redacted>", "hf_style is fine", "sk-learn too"],
        "hpo": {"storage": "postgresql+psycopg2://bench:<redacted>@db.example/optuna"},
    }


def record(task: dict) -> dict:
    fields = ("model", "method", "status", "seed", "metrics", "predictions", "timings", "cost", "env")
    return {"task": task["name"], "config": {"task": task, "seed": 0}, **dict.fromkeys(fields, {})}


def test_results_record_the_task_version_of_the_resolved_task(tmp_path):
    task = {"name": "sst2", "choices": ["negative", "positive"], "template": "{{ sentence }}"}
    written = json.loads(write_results(tmp_path / "a", record(task)).read_text())
    expected = hashlib.sha256(json.dumps(task, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    assert written["task_version"] == task_version(written["config"]) == expected
    changed = {**task, "choices": ["bad", "good"]}  # a verbaliser override is another task definition
    assert json.loads(write_results(tmp_path / "b", record(changed)).read_text())["task_version"] != expected


def test_env_records_the_commit_and_whether_the_tree_was_dirty():
    env = env_info()
    if env["git_commit"] is None:
        pytest.skip("not a git checkout")
    assert isinstance(env["git_dirty"], bool) and env["git_commit"].endswith("-dirty") == env["git_dirty"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    head = head.strip()
    assert env["git_commit"].removesuffix("-dirty") == head


def test_changed_tables_in_results_do_not_make_the_tree_dirty(tmp_path):
    """A sweeps script writes results/<table>.*; the next script's runs are still at a clean commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "start"]):
        subprocess.run([*git, *cmd], cwd=tmp_path, check=True, capture_output=True)
    head = git_commit(tmp_path)
    assert head is not None and len(head) == 40
    (tmp_path / "results" / "table.md").write_text("new\n")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"
