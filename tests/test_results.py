"""results.json is written atomically and never carries credentials."""

from __future__ import annotations

import json

import pytest

from autoglm_bench.results import redact, write_json_atomic, write_results


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # fails half-way through serialising
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


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
        "model": {"path": "x", "hf_token": "hf_abc"},
        "logger": {"api_key": "k", "tags": ["a"]},
        "db": [{"password": "p"}],
    }
    assert redact(cfg) == {
        "model": {"path": "x", "hf_token": "<redacted>"},
        "logger": {"api_key": "<redacted>", "tags": ["a"]},
        "db": [{"password": "<redacted>"}],
    }
