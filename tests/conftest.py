"""Shared fixtures: a session-wide cache for tiny_glm, the offline data folder, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("AUTOGLM_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

# One torch thread per process, here and in every command a test starts (runs honour OMP_NUM_THREADS): three
# xdist workers on 2 cores, each with subprocesses on two threads, spent much of their CPU spinning in wait.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest tests (minutes each on 2 cores) start first, so that under `-n 3 --dist worksteal` no worker is
# left alone with one of them at the end while the others idle.
LONGEST_FIRST = (
    "test_sweeps.py",
    "test_distributed.py::test_ray_evaluation",
    "test_search.py::test_search_writes",
    "test_finetune_hpo.py",
    "test_finetune_sweeper.py",
    "test_finetune_ddp.py",
    "test_sweeper.py::test_jobs_use",
    "test_lmeval_bench.py",
    "test_cache.py::test_killed",
    "test_train_bench.py",
    "test_sweeper.py::test_sigkill_after",
    "test_vlm_harness.py",
    "test_serve_adversarial.py",
    "test_sweeper.py::test_two_sweepers",
    "test_search.py::test_wilcoxon",
    "test_search.py::test_sigkill",
    "test_report.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, key in enumerate(LONGEST_FIRST) if key in item.nodeid), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """tiny_glm is built once per test session into a private cache (also used by CLI subprocesses)."""
    path = Path(os.environ.get("AUTOGLM_TEST_CACHE") or tmp_path_factory.mktemp("autoglm_cache"))
    os.environ["AUTOGLM_CACHE_DIR"] = str(path)
    return path


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, made by ``build(folder)`` once per test session: under pytest-xdist the workers
    share one base temp folder and the first to take its lock builds it (a module fixture alone is rebuilt by
    every worker that runs one of the module's tests)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.built"
    with FileLock(root / f"{name}.lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real offline datasets (../shared/data, or $AUTOGLM_DATA_DIR); tests needing them skip without."""
    if not (DATA_DIR / "sst2" / "validation.jsonl").is_file():
        pytest.skip(f"real datasets not found in {DATA_DIR}")
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny models on a small shared CPU mostly wait on a second one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(model_cache):
    from autoglm_bench.config import ModelConfig
    from autoglm_bench.lm import load

    return load(ModelConfig(name="tiny_glm", kind="tiny_glm"))


def cli_env(extra: dict | None = None) -> dict:
    """The environment a user's command runs in: ours plus ``extra`` (a None value unsets), without
    HYDRA_FULL_ERROR (so errors are the one-line kind a user sees)."""
    env = {**os.environ, **(extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return {k: v for k, v in env.items() if v is not None}  # None in ``extra``: unset


def run_cli(
    *args: str, cwd: Path | None = None, module: str = "autoglm_bench", env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m autoglm_bench ARGS`` the way a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_ok(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """:func:`run_cli` that must succeed: a failure shows its exit code and the tail of its stderr."""
    proc = run_cli(*args, **kwargs)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return proc


def run_ok(run_dir: Path, *overrides: str, **kwargs: Any) -> dict:
    """One ``python -m autoglm_bench OVERRIDES`` run into ``run_dir`` that must succeed: its results.json
    (``kwargs`` as for :func:`run_cli`)."""
    cli_ok(*overrides, f"hydra.run.dir={run_dir}", **kwargs)
    return read_results(run_dir)


def start_cli(*args: str, module: str = "autoglm_bench", env: dict | None = None, **popen: Any) -> subprocess.Popen:
    """Start ``python -m autoglm_bench ARGS`` in the background as a user would (``popen``: stdout, stderr,
    text, start_new_session, ... for :class:`subprocess.Popen`); the caller waits for or kills it."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env(env), **popen)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def study_of(sweep_dir: Path):
    """The one Optuna study of a sweep directory's optuna.db."""
    import optuna

    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def cache_rows(path: Path) -> int:
    """The requests stored in a request-cache file (0 before it or its table exists)."""
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(path, timeout=10) as conn:
            return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def kill_once_cached(cache: Path, *args: str, env: dict | None = None) -> None:
    """Start ``python -m autoglm_bench ARGS`` in the background and SIGKILL it (its whole session) as soon as
    its request cache ``cache`` holds a row (or it ends, or 300 s pass)."""
    proc = start_cli(*args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and cache_rows(cache) == 0:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def served_tiny_glm(model_cache, tmp_path_factory):
    """``python -m autoglm_bench.serve`` serving tiny_glm on a free loopback port, as a user starts it: its
    OpenAI-compatible API root (``.../v1``). Its log goes to a file (a pipe nobody reads could fill)."""
    log = tmp_path_factory.mktemp("served") / "serve.log"
    with log.open("w") as err:
        proc = start_cli(
            "model=tiny_glm",
            "task=toy_sentiment",
            "threads=1",
            "serve.port=0",
            "serve.max_wait_ms=2",
            module="autoglm_bench.serve",
            env={"OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, log.read_text()[-3000:]
        yield line.split(" on ")[1].strip() + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def openai_model(api_root: str, *overrides: str) -> list[str]:
    """The overrides of ``model=openai`` reaching ``api_root``'s tiny_glm (its tokenizer from the local folder)."""
    from autoglm_bench.config import ModelConfig
    from autoglm_bench.lm.tiny_glm import build_tiny_glm

    folder = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    return [
        "model=openai",
        f"model.base_url={api_root}",
        "model.served_model=tiny_glm",
        f"model.tokenizer={folder}",
        *overrides,
    ]
