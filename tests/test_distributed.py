"""backend=ray on a real local Ray runtime with 2 CPU workers: the same results.json as a single-process run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from omegaconf import OmegaConf  # noqa: E402

from autoglm_bench.config import ConfigError, compose  # noqa: E402

RUN = ["task=toy_sentiment", "model=tiny_glm", "prompt.k_shot=2", "limit=24", "dev_size=8", "method.score_dev=true"]
RUN += ["logger=none", "threads=1", "method.cache=false"]  # every run scores: nothing from earlier tests


@pytest.fixture(scope="module")
def ray_runtime(model_cache):
    """One local runtime for the module (its workers inherit the test's model cache)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_evaluation_with_two_workers_equals_the_single_process_run(ray_runtime, tmp_path):
    from autoglm_bench.__main__ import execute

    local = execute(OmegaConf.structured(compose(RUN)), tmp_path / "local")
    distributed = execute(OmegaConf.structured(compose([*RUN, "backend=ray", "ray.workers=2"])), tmp_path / "ray")
    assert distributed["env"]["device"] == "ray:2xcpu"
    assert distributed["cost"]["examples_requested"] == local["cost"]["examples_requested"] == 24 + 8
    for key in ("metrics", "dev_metrics", "objective", "splits", "prompt_example", "metric_stats"):
        assert distributed[key] == local[key], key
    for part in ("predictions", "dev_predictions"):
        assert [p["id"] for p in distributed[part]] == [p["id"] for p in local[part]]
        for d, s in zip(distributed[part], local[part]):
            assert (d["prediction"], d["target"], d["choices"]) == (s["prediction"], s["target"], s["choices"])
            assert d["scores"] == pytest.approx(s["scores"], abs=1e-5)  # batched differently: float noise


def test_ray_backend_is_for_method_evaluate():
    with pytest.raises(ConfigError, match="backend=ray distributes method=evaluate only, got method=finetune"):
        compose(["backend=ray", "method=finetune"])
    with pytest.raises(ConfigError, match="ray needs workers >= 1"):
        compose(["backend=ray", "ray.workers=0"])
