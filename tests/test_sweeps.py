"""The paper-table scripts in sweeps/: QUICK=1 runs each one's whole path (model training or lr sweeps,
seed runs, the report, the provenance header) on the synthetic task, without the data folder; and both
refuse a working tree with uncommitted changes before doing anything."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, cli_env

SCRIPTS = ("prompting_tiny_glm_cpu.sh", "peft_minilm_cpu.sh")


def run_script(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``bash sweeps/NAME`` from the repository root with this interpreter first on PATH and no data folder."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    extra = {"PATH": path, "PYTHON": sys.executable, "AUTOGLM_DATA_DIR": str(tmp_path / "no_data"), **env}
    return subprocess.run(
        ["bash", f"sweeps/{name}"], cwd=REPO, env=cli_env(extra), capture_output=True, text=True, timeout=600
    )


def table_rows(prefix: Path) -> list[dict]:
    with prefix.with_suffix(".csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_prompting_quick_mode_runs_the_whole_path(tmp_path):
    out = tmp_path / "table"
    proc = run_script(
        "prompting_tiny_glm_cpu.sh", tmp_path, QUICK="1", ALLOW_DIRTY="1", RUNS=str(tmp_path / "runs"), OUT=str(out)
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["col"]: r for r in table_rows(out)}
    assert set(rows) == {"0-shot", "4-shot", "prompt-search"} and {r["row"] for r in rows.values()} == {"toy_sentiment"}
    assert rows["0-shot"]["n"] == "1" and rows["0-shot"]["runs_read"] == "2"  # deterministic: 2 seeds, 1 run
    assert {rows[c]["test"] for c in ("4-shot", "prompt-search")} <= {"seed_example_t", "mcnemar_exact"}
    assert all(rows[c]["p_adjusted"] for c in ("4-shot", "prompt-search"))
    md = out.with_suffix(".md").read_text()
    assert "**QUICK=1**" in md and "ALLOW_DIRTY=1 QUICK=1 bash sweeps/prompting_tiny_glm_cpu.sh`" in md
    assert "### Prompts picked by the searches" in md
    commits = {json.loads(p.read_text())["env"]["git_commit"] for p in (tmp_path / "runs").rglob("results.json")}
    assert len(commits) == 1 and f"Commit{'s' if next(iter(commits)).endswith('-dirty') else ''}: " in md
    assert out.with_name("table_cost.png").is_file()


def test_peft_quick_mode_runs_the_whole_path(tmp_path):
    out = tmp_path / "table"
    proc = run_script(
        "peft_minilm_cpu.sh", tmp_path, QUICK="1", ALLOW_DIRTY="1", OUT=str(tmp_path / "runs"), RESULTS=str(out)
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["col"]: r for r in table_rows(out)}
    assert set(rows) == {"full", "lora"} and rows["lora"]["p_adjusted"] != "" and rows["full"]["p_adjusted"] == ""
    md = out.with_suffix(".md").read_text()
    assert "**QUICK=1**" in md and "| toy_sentiment | full | 1e-4,3e-4 |" in md
    assert len(list((tmp_path / "runs" / "sweeps").glob("*/optuna.db"))) == 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_sweeps_scripts_refuse_a_dirty_tree(tmp_path, name):
    """A copy of the script in a scratch git repository: a changed tracked file is refused at once; a changed
    table in results/ (what the other script writes) is not."""
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "results").mkdir()
    for script in (name, "common.sh"):
        shutil.copy(REPO / "sweeps" / script, tmp_path / "sweeps" / script)
    (tmp_path / "notes.txt").write_text("a\n")
    (tmp_path / "results" / "table.md").write_text("a\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "start"]):
        subprocess.run([*git, *cmd], cwd=tmp_path, check=True, capture_output=True)

    def run() -> subprocess.CompletedProcess:  # PYTHON=false: past the check, the script stops at once
        env = {**os.environ, "PYTHON": "false", "VIRTUAL_ENV": "none"}
        return subprocess.run(["bash", f"sweeps/{name}"], cwd=tmp_path, env=env, capture_output=True, text=True)

    (tmp_path / "notes.txt").write_text("b\n")
    proc = run()
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the working tree is not a clean git checkout (")
    assert "-dirty): a table is made from a clean commit" in proc.stderr.replace("\n", " ")
    (tmp_path / "notes.txt").write_text("a\n")
    (tmp_path / "results" / "table.md").write_text("b\n")
    proc = run()
    assert proc.returncode != 0 and "clean git checkout" not in proc.stderr, proc.stderr
