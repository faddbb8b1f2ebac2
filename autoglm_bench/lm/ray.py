"""backend=ray: the ``hf`` backend sharded over Ray actors.

Each of ``ray.workers`` actors loads the model once (``ray.num_cpus`` CPUs and ``ray.num_gpus`` GPUs each),
on the first request that is not answered by the request cache. Every call is cut into one contiguous shard
per live actor and put back together in order, so the caller sees what one process would answer (up to the
float noise of other batches). An actor that dies (killed, out of memory) has its unfinished shard re-run on
the others; ``ray.max_retries`` such failures are tolerated in a run. The request cache wraps this LM like
any other, so what was scored before a failure is kept.

``ray.address`` connects to an existing cluster (``auto``, or ``ray://host:10001``), which is sent this
package; otherwise a local Ray runtime starts with the first actor, listening on 127.0.0.1 only (one that
is already running in the process is reused).

    python -m autoglm_bench task=sst2 backend=ray ray.workers=4 data_dir=../shared/data
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from ..config import PACKAGE_ROOT, ConfigError, ModelConfig, RayConfig
from ..scoring import ScoreStats
from .base import CHUNK_BATCHES, LM, Requests


class HFWorker:
    """One Ray actor: the ``hf`` backend, loaded once, answering the shards it is sent."""

    def __init__(self, model: ModelConfig, threads: int):
        import torch

        from .hf import load

        torch.set_num_threads(threads)
        self.lm = load(model)

    def device(self) -> str:
        return str(self.lm.device)

    def loglikelihood(self, requests: list[Any], batch_size: int, scorer: str) -> tuple[list[Any], ScoreStats]:
        return self.lm.loglikelihood(requests, batch_size=batch_size, scorer=scorer, progress=False)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int
    ) -> tuple[list[Any], ScoreStats]:
        return self.lm.generate_until(contexts, until, max_new_tokens, batch_size=batch_size, progress=False)


class RayLM(LM):
    """The ``hf`` model of ``cfg`` on ``ray.workers`` actors. The tokenizer and the fingerprint (the same as
    the in-process model's) come from the model's files on the driver; the weights load on the actors."""

    backend = "ray"

    def __init__(self, cfg: ModelConfig, ray: RayConfig):
        import torch

        from .hf import hub_config, identity, load_tokenizer, model_path

        self.cfg, self.ray = cfg, ray
        path = model_path(cfg)
        self.name, self.tokenizer = cfg.name, load_tokenizer(cfg, path)
        device = cfg.device if cfg.device != "auto" else "cuda" if ray.num_gpus > 0 else "cpu"  # the actors'
        auto = torch.bfloat16 if device.startswith("cuda") else torch.float32
        dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else auto
        self.fingerprint, self.max_length = identity(cfg, path, hub_config(cfg, path), dtype)
        self.device = f"ray:{ray.workers}x{device.split(':')[0]}"
        self.actors: list[Any] | None = None
        self.failures = 0

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        return self._sharded("loglikelihood", requests, batch_size, scorer)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        return self._sharded("generate_until", contexts, list(until), max_new_tokens, batch_size)

    def chunk_size(self, batch_size: int) -> int:
        return CHUNK_BATCHES * batch_size * self.ray.workers

    def usage(self) -> dict[str, int]:
        return {"actor_failures": self.failures}

    def close(self) -> None:
        import ray

        for actor in self.actors or []:
            ray.kill(actor)
        self.actors = None

    def _sharded(self, method: str, items: list[Any], *args: Any) -> tuple[list[Any], ScoreStats]:
        """``method`` of the actors over ``items``: one contiguous shard per live actor, a dead actor's shard
        re-run on the live ones; the results in the order of ``items``, the seconds of the whole call."""
        import ray
        from ray.exceptions import RayActorError

        start = time.perf_counter()
        results: list[Any] = [None] * len(items)
        stats = ScoreStats()
        pending: dict[Any, tuple[Any, int, int]] = {}

        def submit(lo: int, hi: int) -> None:
            actors = self._live()
            size = math.ceil((hi - lo) / len(actors))
            for actor, a in zip(actors, range(lo, hi, size)):
                b = min(a + size, hi)
                pending[getattr(actor, method).remote(items[a:b], *args)] = (actor, a, b)

        if items:
            submit(0, len(items))
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, lo, hi = pending.pop(ref)
            try:
                part, part_stats = ray.get(ref)
            except RayActorError as exc:
                self._lost(actor, exc)
                submit(lo, hi)
                continue
            results[lo:hi] = part
            stats.examples += part_stats.examples
            stats.tokens += part_stats.tokens
        stats.seconds = time.perf_counter() - start
        return results, stats

    def _live(self) -> list[Any]:
        """The live actors, started on first use (each has loaded the model when this returns)."""
        if self.actors is None:
            import ray
            from ray.exceptions import RayActorError

            start_ray(self.ray)
            cfg = self.ray
            actor = ray.remote(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_restarts=0)(HFWorker)
            threads = max(1, math.ceil(cfg.num_cpus))
            self.actors = [actor.remote(self.cfg, threads) for _ in range(cfg.workers)]
            for a, ref in [(a, a.device.remote()) for a in self.actors]:
                try:
                    self.device = f"ray:{cfg.workers}x{ray.get(ref)}"
                except RayActorError as exc:
                    self._lost(a, exc)
        if not self.actors:
            raise RuntimeError("every Ray actor of backend=ray has died")
        return self.actors

    def _lost(self, actor: Any, exc: BaseException) -> None:
        """Forget a dead actor; past ``ray.max_retries`` failures (or with none left) the run fails."""
        assert self.actors is not None
        self.actors = [a for a in self.actors if a is not actor]
        self.failures += 1
        if self.failures > self.ray.max_retries or not self.actors:
            left = f"{len(self.actors)} actors left"
            raise RuntimeError(
                f"backend=ray: {self.failures} actor failures (ray.max_retries={self.ray.max_retries}, {left}); "
                f"last: {type(exc).__name__}"
            ) from exc


def start_ray(cfg: RayConfig) -> None:
    """Connect to ``ray.address``, or start a local Ray runtime on 127.0.0.1 (at least as many CPUs as the
    actors ask for, or they would wait forever for a free one); a runtime already running is reused."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        try:
            ray.init(address=cfg.address, runtime_env={"py_modules": [str(PACKAGE_ROOT)]}, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
            raise ConfigError(
                f"could not connect to the Ray cluster at ray.address={cfg.address!r}{cause}; a cluster with "
                "token authentication also needs RAY_AUTH_MODE=token and its token"
            ) from exc
        return
    from ray._private import ray_constants

    from ..threads import available_cpus

    # Ray's local runtime takes the machine's address and listens on all interfaces unless multi-node
    # clusters are off for the process (Ray's own switch, set on macOS and Windows): then the node address
    # is 127.0.0.1 and every service it starts listens there only. Processes started during init inherit
    # the variable; it is restored afterwards so a later connection to a cluster resolves addresses as usual.
    saved = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=max(available_cpus(), math.ceil(cfg.workers * cfg.num_cpus)),
            include_dashboard=False,
            log_to_driver=False,
        )
    finally:
        if saved[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
