"""backend=ray on a real local Ray runtime with 2 CPU workers: the same results.json as a single-process run,
even when one actor is killed mid-run; what was scored is in the request cache, so a rerun scores nothing;
the runtime listens on 127.0.0.1 only."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from omegaconf import OmegaConf  # noqa: E402

from autoglm_bench.config import ConfigError, RayConfig, compose  # noqa: E402

from .conftest import cache_rows  # noqa: E402

RUN = ["task=toy_sentiment", "model=tiny_glm", "prompt.k_shot=2", "limit=48", "dev_size=8", "method.score_dev=true"]
RUN += ["logger=none", "threads=1", "method.batch_size=2", "method.scorer=naive"]


@pytest.fixture(scope="module")
def ray_runtime(model_cache):
    """One local runtime for the module, started as backend=ray starts it (its workers inherit the test's
    model cache)."""
    from autoglm_bench.lm.ray import start_ray

    start_ray(RayConfig(workers=2))
    yield
    ray.shutdown()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def listening_addresses(pids: list[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of the TCP sockets ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.append(fields[1].split(":")[0])
    return found


def test_the_local_runtime_listens_on_loopback_only(ray_runtime):
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    addresses = listening_addresses([os.getpid(), *descendants(os.getpid())])
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert addresses and all(a in loopback for a in addresses), addresses


def test_ray_evaluation_survives_a_killed_actor_and_a_rerun_scores_nothing(ray_runtime, tmp_path):
    from autoglm_bench.__main__ import execute

    local = execute(OmegaConf.structured(compose([*RUN, "method.cache=false"])), tmp_path / "local")
    cache = tmp_path / "cache.sqlite"
    distributed_run = [*RUN, "backend=ray", "ray.workers=2", f"method.cache_path={cache}"]
    killed: list[int] = []

    def kill_an_actor_once_something_is_cached() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if cache_rows(cache):
                actors = [p for p in descendants(os.getpid()) if cmdline(p).startswith("ray::HFWorker")]
                os.kill(actors[0], signal.SIGKILL)
                killed.append(actors[0])
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_an_actor_once_something_is_cached)
    killer.start()
    distributed = execute(OmegaConf.structured(compose(distributed_run)), tmp_path / "ray")
    killer.join()
    assert killed and distributed["cost"]["actor_failures"] == 1
    assert distributed["env"]["device"] == "ray:2xcpu" and distributed["env"]["backend"] == "ray"
    assert distributed["cost"]["examples_requested"] == local["cost"]["examples_requested"] == 48 + 8
    for key in ("metrics", "dev_metrics", "objective", "splits", "prompt_example", "metric_stats"):
        assert distributed[key] == local[key], key
    for part in ("predictions", "dev_predictions"):
        assert [p["id"] for p in distributed[part]] == [p["id"] for p in local[part]]
        for d, s in zip(distributed[part], local[part]):
            assert (d["prediction"], d["target"], d["choices"]) == (s["prediction"], s["target"], s["choices"])
            assert d["scores"] == pytest.approx(s["scores"], abs=1e-5)  # batched differently: float noise

    again = execute(OmegaConf.structured(compose(distributed_run)), tmp_path / "again")
    assert again["cost"]["examples_scored"] == 0 and again["cost"]["cache_hits"] == 48 + 8
    assert again["predictions"] == distributed["predictions"]


def test_ray_backend_is_for_method_evaluate():
    with pytest.raises(ConfigError, match="backend=ray distributes method=evaluate only, got method=finetune"):
        compose(["backend=ray", "method=finetune"])
    with pytest.raises(ConfigError, match="ray needs workers >= 1"):
        compose(["backend=ray", "ray.workers=0"])
