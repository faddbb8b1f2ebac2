"""The checks a schema type cannot express: ranges, cross-field and cross-group rules, each failing with
a one-line :class:`ConfigError`. Allowed names are the schema's Enum types (:mod:`.schema`) and fail at
composition; the lists checked here are the ones only known at run time (a task's templates, the files
in conf/model/)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, member, one_line
from ..studies import distribution
from .composition import check_known_keys, enum_message, group_options
from .schema import (
    METRICS,
    VLM_KINDS,
    DemoOrder,
    DemoSelection,
    RunConfig,
    SearchSpaceConfig,
    SecondObjective,
    SpaceParam,
)


def one_of(what: str, value: Any, allowed: tuple[str, ...] | list[str], where: str = "") -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}{where}; allowed: {', '.join(allowed)}")


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Check a composed config and return it as a typed :class:`RunConfig`.

    Raises :class:`ConfigError` with a one-line message for the first problem found.

    >>> from omegaconf import OmegaConf
    >>> validate(OmegaConf.structured(RunConfig(limit=-1)))  # doctest: +SKIP
    ConfigError: limit must be a positive number of examples (or null for all), got -1
    """
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg)
        try:
            run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        except Exception as exc:  # an unresolved interpolation or missing mandatory value
            raise ConfigError(enum_message(exc) or one_line(exc)) from exc
    else:
        run = cfg
    t, m, p = run.task, run.model, run.prompt

    if run.limit is not None and run.limit < 1:
        raise ConfigError(f"limit must be a positive number of examples (or null for all), got {run.limit}")
    if run.dev_size < 0:
        raise ConfigError(f"dev_size must be >= 0, got {run.dev_size}")
    if run.threads is not None and run.threads < 1:
        raise ConfigError(f"threads must be >= 1 (or null for automatic), got {run.threads}")
    if run.method.batch_size < 1:
        raise ConfigError(f"method.batch_size must be >= 1, got {run.method.batch_size}")

    for metric in t.metrics:
        one_of("metric", metric, METRICS[t.type], f" for {t.type} task {t.name!r}")
    if t.type == "generation" and "acc" in t.metrics and t.hook is None:
        raise ConfigError(
            f"metric 'acc' of generation task {t.name!r} needs a task hook that judges each answer (as mmmu's); "
            "use exact_match"
        )
    if not t.templates:
        raise ConfigError(f"task {t.name!r} defines no templates; add task.templates.default")
    one_of("prompt.template", p.template, list(t.templates), f" for task {t.name!r}")
    if "eval" not in t.splits:
        raise ConfigError(f"task {t.name!r} has no 'eval' entry in splits; it has: {', '.join(t.splits)}")
    if t.type == "multiple_choice" and not t.choices:
        raise ConfigError(f"multiple_choice task {t.name!r} needs a non-empty choices list")
    if t.answer_pattern is not None:
        try:
            re.compile(t.answer_pattern)
        except re.error as exc:
            raise ConfigError(f"task.answer_pattern {t.answer_pattern!r} is not a valid regex: {exc}") from exc
    if t.hook is None and t.source.local is None and t.source.hub is None:
        raise ConfigError(f"task {t.name!r} names no source (source.local, source.hub or a hook)")

    if p.k_shot < 0:
        raise ConfigError(f"prompt.k_shot must be >= 0, got {p.k_shot}")
    if p.k_shot > 0 and "train" not in t.splits:
        raise ConfigError(
            f"prompt.k_shot={p.k_shot} needs a train split for demos, but task {t.name!r} has only: "
            f"{', '.join(t.splits)}"
        )
    if p.fewshot_mode != "fixed" and p.demo_selection != "random":
        raise ConfigError(
            f"prompt.demo_selection={p.demo_selection} picks the demos of prompt.fewshot_mode=fixed; "
            f"fewshot_mode={p.fewshot_mode} picks its own (set demo_selection=random or fewshot_mode=fixed)"
        )

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", m.device):
        raise ConfigError(f"unknown model.device {m.device!r}; allowed: auto, cpu, mps, cuda, cuda:N")
    if m.kind == "openai":
        validate_openai(run)
    elif m.kind not in ("tiny_glm", "tiny_glm4v", "encoder") and not m.path:
        raise ConfigError(f"model {m.name!r} needs model.path=<hub id or local folder>")
    if m.kind != "tiny_glm" and m.path and m.path.startswith(("/", "~", ".")):  # absolute, ~, ./, ../
        folder = Path(m.path).expanduser()
        if not folder.is_dir():  # else loading would take it for a malformed hub id
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"model.path {m.path!r} is a local path and {what} ({folder.resolve()})")
    if m.needs_remote_code and not m.trust_remote_code:
        raise ConfigError(
            f"model {m.name!r} ({m.path}) runs code from its repository; it stays off unless you pass "
            "model.trust_remote_code=true"
        )
    if m.kind == "encoder" and run.method.name in ("evaluate", "prompt_search"):
        raise ConfigError(
            f"model {m.name!r} is an encoder without a language-model head; method=evaluate needs a causal LM "
            "(tiny_glm, glm4_9b, hf)"
        )
    if m.max_length < 2:
        raise ConfigError(f"model.max_length must be >= 2, got {m.max_length}")
    if t.images and m.kind not in VLM_KINDS:
        raise ConfigError(
            f"task {t.name!r} has images ({', '.join(t.images)}); model {m.name!r} (kind {m.kind}) reads text only: "
            f"use a vision-language model ({', '.join(VLM_KINDS)})"
        )
    if t.images and run.backend == "ray":
        raise ConfigError(f"task {t.name!r} has images; backend=ray shards text models only, use backend=local")

    if run.backend == "ray":
        if run.method.name != "evaluate":
            raise ConfigError(f"backend=ray distributes method=evaluate only, got method={run.method.name}")
        if run.ray.workers < 1 or run.ray.num_cpus <= 0 or run.ray.num_gpus < 0 or run.ray.max_retries < 0:
            raise ConfigError(
                f"ray needs workers >= 1, num_cpus > 0, num_gpus >= 0, max_retries >= 0; got {run.ray.workers}, "
                f"{run.ray.num_cpus}, {run.ray.num_gpus}, {run.ray.max_retries}"
            )
        if m.kind == "openai":
            raise ConfigError("backend=ray shards a model loaded in this process; model=openai is served elsewhere")
    if run.method.name == "finetune":
        validate_finetune(run)
    if run.method.name == "prompt_search":
        validate_prompt_search(run)
    return run


def validate_openai(run: RunConfig) -> None:
    """The checks of a model served over an OpenAI-compatible API (model=openai)."""
    m = run.model
    if not m.base_url or not re.match(r"https?://[^/\s]+", m.base_url):
        raise ConfigError(f"model=openai needs model.base_url=http(s)://HOST:PORT/v1, got {m.base_url!r}")
    if m.concurrency < 1 or m.prompts_per_request < 1 or m.timeout_s <= 0 or m.max_retries < 0:
        raise ConfigError(
            f"model=openai needs concurrency >= 1, prompts_per_request >= 1, timeout_s > 0, max_retries >= 0; got "
            f"{m.concurrency}, {m.prompts_per_request}, {m.timeout_s}, {m.max_retries}"
        )
    if m.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.api_key_env):
        raise ConfigError(f"model.api_key_env names an environment variable (OPENAI_API_KEY), got {m.api_key_env!r}")
    if run.method.name == "finetune":
        raise ConfigError("method=finetune trains weights in this process; model=openai only reaches a server")
    if m.api == "chat" and run.task.type == "multiple_choice":
        raise ConfigError(
            f"task {run.task.name!r} is multiple choice, scored by log-likelihoods, which a chat-only server "
            "(model.api=chat) does not return; use model.api=completions (echo and logprobs) or a generation task"
        )


def validate_serve(run: RunConfig) -> None:
    """The checks of the serve.* settings (python -m autoglm_bench.serve)."""
    sv = run.serve
    if run.model.kind == "openai" or "openai" in sv.models:
        raise ConfigError("serve runs models in its own process; model=openai is a model served elsewhere")
    if not 0 <= sv.port < 65536:
        raise ConfigError(f"serve.port must be in 0..65535 (0: any free port), got {sv.port}")
    if sv.batch_size < 1 or sv.max_wait_ms < 0 or sv.idle_release_s <= 0:
        raise ConfigError(
            f"serve needs batch_size >= 1, max_wait_ms >= 0, idle_release_s > 0; got {sv.batch_size}, "
            f"{sv.max_wait_ms}, {sv.idle_release_s}"
        )
    if sv.memory_budget_mb is not None and sv.memory_budget_mb <= 0:
        raise ConfigError(f"serve.memory_budget_mb must be > 0 (or null: no budget), got {sv.memory_budget_mb}")
    at_least_one = (
        "max_input_chars",
        "max_new_tokens",
        "max_stop_chars",
        "max_prompts",
        "max_request_tokens",
        "max_batch_tokens",
        "max_body_bytes",
        "max_image_pixels",
        "max_images",
        "max_queue",
    )
    for key in at_least_one:
        if getattr(sv, key) < 1:
            raise ConfigError(f"serve.{key} must be >= 1, got {getattr(sv, key)}")
    for key in ("max_stop", "max_logprobs"):
        if getattr(sv, key) < 0:
            raise ConfigError(f"serve.{key} must be >= 0, got {getattr(sv, key)}")
    for key in ("max_queue_wait_s", "request_timeout_s", "shutdown_timeout_s"):
        if not getattr(sv, key) > 0:
            raise ConfigError(f"serve.{key} must be > 0 seconds, got {getattr(sv, key)}")
    if not sv.allowed_hosts:
        raise ConfigError('serve.allowed_hosts is empty: no request could reach the server (["*"] allows any)')
    if sv.api_key_env is not None and not os.environ.get(sv.api_key_env):
        raise ConfigError(f"serve.api_key_env={sv.api_key_env!r} but that environment variable is not set or empty")
    if sv.api_key_env is None and not is_loopback(sv.host):
        raise ConfigError(
            f"serve.host={sv.host!r} is not a loopback address: set serve.api_key_env to the name of an environment "
            "variable holding a bearer token (clients send Authorization: Bearer <token>)"
        )
    for name in sv.models:
        if not Path(name).expanduser().is_dir():
            one_of("model in serve.models", name, group_options("model"), " (or a finetune run directory)")
    for name in sv.tasks:
        one_of("task in serve.tasks", name, group_options("task"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only listens on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_finetune(run: RunConfig) -> None:
    """The finetune-only checks that need no model (LoRA targets and hardware are checked at load time)."""
    pe, op, tr, me = run.peft, run.optim, run.trainer, run.method
    if pe.method == "projector" and run.model.kind not in VLM_KINDS:
        raise ConfigError(
            f"peft=projector trains a vision-language model's projector; model {run.model.name!r} is kind "
            f"{run.model.kind} (use {', '.join(VLM_KINDS)})"
        )
    if run.model.kind in VLM_KINDS and pe.method in ("prefix", "prompt_tuning"):
        raise ConfigError(f"peft={pe.method} is not built for vision-language models; use full, lora or projector")
    if pe.method == "lora" and (pe.r < 1 or pe.alpha <= 0):
        raise ConfigError(f"peft.r and peft.alpha must be positive, got r={pe.r} alpha={pe.alpha}")
    if pe.method in ("prefix", "prompt_tuning") and pe.num_virtual_tokens < 1:
        raise ConfigError(f"peft.num_virtual_tokens must be >= 1, got {pe.num_virtual_tokens}")
    if not 0.0 <= pe.dropout < 1.0:
        raise ConfigError(f"peft.dropout must be in [0, 1), got {pe.dropout}")
    if op.lr <= 0 or op.weight_decay < 0 or not 0.0 <= op.warmup_ratio < 1.0 or op.warmup_steps < 0:
        raise ConfigError(
            f"optim needs lr > 0, weight_decay >= 0, 0 <= warmup_ratio < 1, warmup_steps >= 0; got lr={op.lr} "
            f"weight_decay={op.weight_decay} warmup_ratio={op.warmup_ratio} warmup_steps={op.warmup_steps}"
        )
    for key in ("devices", "num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        if getattr(tr, key) < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(tr, key)}")
    if tr.max_epochs < 1 and tr.max_steps < 1:
        raise ConfigError(
            f"set trainer.max_epochs >= 1 or trainer.max_steps >= 1 (got {tr.max_epochs}, {tr.max_steps})"
        )
    if me.eval_batch_size < 1 or (me.train_size is not None and me.train_size < 1):
        raise ConfigError(
            f"method needs eval_batch_size >= 1 and train_size >= 1 or null; got {me.eval_batch_size}, {me.train_size}"
        )
    if me.loss is not None and ":" not in me.loss:
        raise ConfigError(f"method.loss {me.loss!r} must name a function as 'package.module:function'")
    if me.packing and run.model.kind == "encoder":
        raise ConfigError("method.packing=true needs a causal LM; encoder models train a classification head")
    if run.model.kind == "encoder" and run.task.type != "multiple_choice":
        raise ConfigError(f"model {run.model.name!r} is an encoder; it fine-tunes on multiple_choice tasks only")
    if run.hpo.n_trials < 0:
        raise ConfigError(f"hpo.n_trials must be >= 0, got {run.hpo.n_trials}")
    if run.hpo.heartbeat_s < 1:
        raise ConfigError(f"hpo.heartbeat_s must be >= 1, got {run.hpo.heartbeat_s}")


def validate_prompt_search(run: RunConfig) -> None:
    """The prompt_search checks that need neither data nor model (storage reachability is checked on open)."""
    s, sp, t = run.search, run.search.space, run.task
    if t.type != "multiple_choice":
        raise ConfigError(f"method=prompt_search needs a multiple_choice task; {t.name!r} is {t.type}")
    if run.prompt.fewshot_mode != "fixed":
        raise ConfigError(
            f"method=prompt_search searches demo_selection, which needs prompt.fewshot_mode=fixed; "
            f"got {run.prompt.fewshot_mode}"
        )
    categorical_space(sp)
    if s.n_trials <= 0:
        raise ConfigError(f"search.n_trials must be a positive number of trials, got {s.n_trials}")
    for key in ("instructions", "templates", "k_shot", "demo_selection", "demo_order"):
        value = getattr(sp, key)
        if value is not None and len(value) == 0:
            raise ConfigError(f"search.space.{key} is an empty list; give at least one choice (or null: default)")
    for name in sp.templates or []:
        one_of("template", name, list(t.templates), f" in search.space.templates for task {t.name!r}")
    n_choices = len(t.choices or [])
    for name, words in sp.verbalizers.items():
        if t.type != "multiple_choice" or len(words) != n_choices:
            raise ConfigError(
                f"search.space.verbalizers.{name} has {len(words)} label words; task {t.name!r} needs {n_choices}"
            )
    if "task" in sp.instructions and not t.instructions:
        raise ConfigError(f"search.space.instructions lists 'task' but task {t.name!r} has no instructions")
    for k in sp.k_shot:
        if k < 0:
            raise ConfigError(f"search.space.k_shot values must be >= 0, got {k}")
    if max(sp.k_shot) > 0 and "train" not in t.splits:
        raise ConfigError(f"search.space.k_shot={list(sp.k_shot)} needs a train split; task {t.name!r} has none")
    for value in sp.demo_selection:
        member(DemoSelection, value, "demo selection", " in search.space.demo_selection")
    for value in sp.demo_order:
        member(DemoOrder, value, "demo order", " in search.space.demo_order")
    if (
        not s.objectives
        or s.objectives[0] not in ("acc", "acc_norm")
        or len(s.objectives) > 2
        or any(o not in SecondObjective.names() for o in s.objectives[1:])
    ):
        raise ConfigError(
            f"search.objectives {list(s.objectives)} must be acc or acc_norm, optionally followed by "
            f"{', '.join(SecondObjective.names())}"
        )
    if len(s.objectives) == 2 and s.pruner != "none":
        raise ConfigError(f"search.pruner={s.pruner} needs a single objective; use search.pruner=none with two")
    if s.pruner == "wilcoxon" and not 0.0 < s.p_threshold < 1.0:
        raise ConfigError(f"search.p_threshold must be in (0, 1), got {s.p_threshold}")
    if s.minibatch < 1 or s.demo_pool < 1 or s.heartbeat_s < 1 or s.population_size < 2 or s.n_startup_trials < 0:
        raise ConfigError(
            "search needs minibatch >= 1, demo_pool >= 1, heartbeat_s >= 1, population_size >= 2, "
            f"n_startup_trials >= 0; got {s.minibatch}, {s.demo_pool}, {s.heartbeat_s}, {s.population_size}, "
            f"{s.n_startup_trials}"
        )
    if run.dev_size < 1:
        raise ConfigError(f"method=prompt_search selects on the dev rows; dev_size must be >= 1, got {run.dev_size}")
    for params in s.enqueue:
        for key in params:
            member(SpaceParam, key, "parameter", " in search.enqueue")
    if s.proposal.history < 1 or s.proposal.max_new_tokens < 1:
        raise ConfigError("search.proposal.history and search.proposal.max_new_tokens must be >= 1")
    if s.proposal.model is not None:
        one_of("search.proposal.model", s.proposal.model, group_options("model"))


def categorical_space(space: SearchSpaceConfig) -> None:
    """Turn every sweep-syntax string of ``space`` into its list of choices, in place (one syntax for every
    search space: :func:`autoglm_bench.studies.parse_space`)."""

    for key in ("instructions", "templates", "k_shot", "demo_selection", "demo_order"):
        value = getattr(space, key)
        if isinstance(value, str):
            dist = distribution(f"search.space.{key}", value)
            if not hasattr(dist, "choices"):
                raise ConfigError(
                    f"search.space.{key}={value!r}: prompt dimensions are categorical; use choice(...) or range(...)"
                )
            value = list(dist.choices)
        if value is not None and not isinstance(value, (list, tuple)):
            raise ConfigError(f"search.space.{key} must be a list or a choice(...)/range(...), got {value!r}")
        if key == "k_shot" and value is not None:
            if not all(isinstance(k, int) for k in value):
                raise ConfigError(f"search.space.k_shot values must be integers, got {list(value)}")
        setattr(space, key, None if value is None else list(value))
