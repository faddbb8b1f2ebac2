"""backend=ray: method=evaluate with its examples sharded over Ray actors.

Each of ``ray.workers`` actors loads the model once (``ray.num_cpus`` CPUs and ``ray.num_gpus`` GPUs each);
the driver renders the prompts as a single-process run does, sends each actor a contiguous shard of the
examples, and puts the per-example predictions back together in order, so results.json has the same
layout and predictions as a local run. ``ray.address`` connects to an existing cluster (``auto``, or
``ray://host:10001``), which is sent this package; otherwise a local Ray runtime starts with the run (one
that is already running in the process is reused).

    python -m autoglm_bench task=sst2 backend=ray ray.workers=4 data_dir=../shared/data
"""

from __future__ import annotations

import math
import time
from typing import Any

from .config import PACKAGE_ROOT, ConfigError, MethodConfig, ModelConfig, RunConfig
from .scoring import ScoreStats


class _Worker:
    """One Ray actor: the model, loaded once, scoring the shards it is sent."""

    def __init__(self, model: ModelConfig, threads: int):
        import torch

        from .models import load_model

        torch.set_num_threads(threads)
        self.lm = load_model(model)

    def device(self) -> str:
        return str(self.lm.device)

    def score(self, task: Any, examples: list[Any], method: MethodConfig, chat: bool) -> tuple:
        from .evaluate import score_examples

        predictions, stats, contexts = score_examples(
            self.lm, task, examples, method, self.lm.tokenizer if chat else None
        )
        return predictions, stats.examples, stats.tokens, contexts


class RayWorkers:
    """Stands in for a :class:`~autoglm_bench.models.LoadedModel` in method=evaluate: ``tokenizer`` and
    ``device`` as a loaded model has them, and :meth:`score_examples`, which
    :func:`autoglm_bench.evaluate.score_examples` hands its work to."""

    distributed = True

    def __init__(self, run: RunConfig):
        import ray
        from transformers import AutoTokenizer

        from .models import model_path

        cfg = run.ray
        if not ray.is_initialized():
            if cfg.address:
                try:
                    ray.init(address=cfg.address, runtime_env={"py_modules": [str(PACKAGE_ROOT)]}, log_to_driver=False)
                except (ConnectionError, RuntimeError) as exc:
                    cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
                    raise ConfigError(
                        f"could not connect to the Ray cluster at ray.address={cfg.address!r}{cause}; a cluster with "
                        "token authentication also needs RAY_AUTH_MODE=token and its token"
                    ) from exc
            else:
                from .threads import available_cpus

                cores = available_cpus()
                # never fewer CPUs than the actors ask for: they would wait forever for a free one
                ray.init(
                    num_cpus=max(cores, math.ceil(cfg.workers * cfg.num_cpus)),
                    include_dashboard=False,
                    log_to_driver=False,
                )
        actor = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)(_Worker)
        threads = max(1, math.ceil(cfg.num_cpus))
        self.actors = [actor.remote(run.model, threads) for _ in range(cfg.workers)]
        devices = ray.get([a.device.remote() for a in self.actors])  # every actor has loaded the model
        self.device = f"ray:{cfg.workers}x{devices[0]}"
        path = model_path(run.model)
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, revision=run.model.revision, trust_remote_code=run.model.trust_remote_code
        )

    def score_examples(
        self, task: Any, examples: list[Any], method: MethodConfig, chat_tokenizer: Any = None
    ) -> tuple[list[dict[str, Any]], ScoreStats, list[str]]:
        """:func:`~autoglm_bench.evaluate.score_examples`, one contiguous shard per actor, gathered in order.
        The cost's seconds are the wall-clock time of the whole (parallel) call."""
        import ray

        from .tasks import Task

        start = time.perf_counter()
        light = Task(cfg=task.cfg, hook=task.hook, rows={})  # the actors need the config, not the rows
        size = math.ceil(len(examples) / len(self.actors)) if examples else 1
        shards = [examples[i : i + size] for i in range(0, len(examples), size)]
        chat = chat_tokenizer is not None
        parts = ray.get([a.score.remote(light, shard, method, chat) for a, shard in zip(self.actors, shards)])
        predictions = [p for part in parts for p in part[0]]
        contexts = [c for part in parts for c in part[3]]
        stats = ScoreStats(
            examples=sum(part[1] for part in parts),
            tokens=sum(part[2] for part in parts),
            seconds=time.perf_counter() - start,
        )
        return predictions, stats, contexts
