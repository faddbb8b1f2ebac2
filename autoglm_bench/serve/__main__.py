"""python -m autoglm_bench.serve [OVERRIDES...]: serve a model and task over HTTP (127.0.0.1:8080 by default).

The arguments are config overrides, composed like every run (``model=tiny_glm task=sst2 prompt.k_shot=2``),
plus the serve.* settings: host, port (0: any free port), models (more conf/model options or finetune run
directories), tasks (more task options), batch_size, max_wait_ms, policy (fifo | priority), idle_release_s,
memory_budget_mb, the limits (max_input_chars, max_new_tokens, max_stop, max_stop_chars, max_logprobs,
max_prompts, max_request_tokens, max_body_bytes, max_queue, max_queue_wait_s, request_timeout_s,
shutdown_timeout_s), allowed_hosts and api_key_env (the environment variable holding the bearer token; needed
for a non-loopback host). Endpoints: / (a page to try prompts), /health, /metrics, /openapi.json, /tasks,
/tasks/NAME, /classify, /task, /generate, /v1/completions, /v1/models.

    python -m autoglm_bench.serve model=tiny_glm task=toy_sentiment serve.port=8080
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar per batch
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import ConfigError, compose, describe_composition_error, validate_serve

    try:
        run = compose(argv)
        validate_serve(run)
        import torch

        torch.manual_seed(run.seed)
        if run.threads is not None:
            torch.set_num_threads(run.threads)
        from .server import serve

        serve(run, argv)
    except (ConfigError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {describe_composition_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
