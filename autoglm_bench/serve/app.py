"""The inference service: FastAPI endpoints over the harness's own prompts and scorer.

Every task request renders its input row with the task's template, instruction, demos and verbalizer
(:func:`~autoglm_bench.prompts.render_examples`) and is scored by
:func:`~autoglm_bench.evaluate.score_examples`, the function ``method=evaluate`` uses, so a classification
equals the harness's prediction for the same row. Requests run in batches (:mod:`.scheduler`) on models
from a pool that loads and releases them (:mod:`.pool`); :mod:`.metrics` counts everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from ..config import ConfigError, ModelConfig, RunConfig, compose, group_options, one_line, resolve_data_dir
from .metrics import Metrics
from .pool import ModelPool, model_bytes
from .scheduler import BatchInfo, Scheduler

log = logging.getLogger("autoglm_bench.serve")


class BadRequest(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRequest(_Body):
    input: dict[str, Any]  # one row: the fields the task's template uses (and its gold fields, optionally)
    task: str | None = None  # default: the task the server was started with
    model: str | None = None  # default: the model the server was started with
    priority: float = 0.0  # policy=priority: higher runs first
    max_new_tokens: int | None = None  # generation tasks: default the task's
    stop: list[str] | None = None  # generation tasks: default the task's generation.until


class GenerateRequest(_Body):
    prompt: str | None = None  # raw text; or task + input to render the task's prompt
    task: str | None = None
    input: dict[str, Any] | None = None
    model: str | None = None
    priority: float = 0.0
    max_new_tokens: int | None = None
    stop: list[str] | None = None


class CompletionRequest(BaseModel):
    """OpenAI's /v1/completions body (greedy decoding only); fields it defines that do not change a greedy
    completion (user, top_p, presence_penalty, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[int] | list[list[int]] | list[str]  # text, or token ids as vLLM takes them
    max_tokens: int = 16
    stop: str | list[str] | None = None
    logprobs: int | None = None
    echo: bool = False
    temperature: float | None = None
    n: int = 1
    stream: bool = False


# ---------------------------------------------------------------- served models and tasks


@dataclass
class ModelSpec:
    """A model the server may load: a conf/model option, or a finetune run directory (``checkpoint``)."""

    name: str
    cfg: ModelConfig
    checkpoint: RunConfig | None = None  # the finetune run's config
    weights: Path | None = None  # its saved model or adapter folder

    @property
    def head(self) -> bool:
        """A classification head (a fine-tuned encoder) rather than a language model."""
        return self.checkpoint is not None and self.cfg.kind == "encoder"


@dataclass
class Served:
    """A loaded model: an HFLM (language models) or a classification head with its tokenizer."""

    spec: ModelSpec
    lm: Any = None
    head: Any = None
    tokenizer: Any = None
    device: Any = None


@dataclass
class TaskState:
    """A task as the server renders it: its run config (task + prompt) and the demo pool (train rows)."""

    key: tuple[str, str]  # (task name, the checkpoint whose own config it comes from, or "")
    run: RunConfig
    task: Any  # autoglm_bench.tasks.Task; rows["train"] is the demo pool when prompt.k_shot > 0
    fields: list[str]  # the input fields the chosen template uses
    target_fields: list[str]  # the fields the gold target needs


def checkpoint_spec(path: str) -> ModelSpec:
    """A finetune run directory as a servable model: its config and saved weights from results.json."""
    from omegaconf import OmegaConf

    from ..config import validate
    from ..results import read_results

    folder = Path(path).expanduser()
    try:
        record = read_results(folder)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path!r} is not a run directory with a readable results.json ({one_line(exc)})") from exc
    saved = (record.get("training") or {}).get("saved_model")
    if record.get("method") != "finetune" or not saved:
        raise ConfigError(f"run directory {path!r} holds no saved fine-tuned model (method.save_model=true)")
    hydra_config = folder / ".hydra" / "config.yaml"  # written by the CLI; results.json redacts token-like keys
    saved_config = OmegaConf.load(hydra_config) if hydra_config.is_file() else _unredacted(record["config"])
    run = validate(OmegaConf.merge(OmegaConf.structured(RunConfig), saved_config))
    if run.peft.method not in ("full", "lora"):
        raise ConfigError(f"serving a peft={run.peft.method} checkpoint is not supported; allowed: full, lora")
    return ModelSpec(name=path, cfg=run.model, checkpoint=run, weights=Path(saved))


def _unredacted(value: Any) -> Any:
    """A results.json config without the values :func:`~autoglm_bench.results.redact` hid (defaults fill in)."""
    if isinstance(value, dict):
        return {k: _unredacted(v) for k, v in value.items() if v != "<redacted>"}
    return value


def load_served(spec: ModelSpec) -> tuple[Served, int]:
    """Load a model spec (the pool's loader) through :func:`autoglm_bench.lm.load`: weights on the configured
    device, in eval mode."""
    from ..lm import load
    from ..lm.hf import load_classifier

    if spec.checkpoint is None:
        lm = load(spec.cfg)
    elif spec.head:
        n = len(spec.checkpoint.task.choices or [])
        model, tokenizer = load_classifier(spec.cfg, str(spec.weights), n, lora=spec.checkpoint.peft.method == "lora")
        return Served(spec, head=model, tokenizer=tokenizer, device=model.device), model_bytes(model)
    elif spec.checkpoint.peft.method == "lora":
        lm = load(spec.cfg, adapter=str(spec.weights))
    else:
        lm = load(dataclasses.replace(spec.cfg, kind="causal", path=str(spec.weights)))
    return Served(spec, lm=lm, tokenizer=lm.tokenizer, device=lm.device), model_bytes(lm.model)


def template_fields(*sources: str) -> list[str]:
    """The row fields that Jinja2 templates read, sorted."""
    from jinja2 import meta

    from ..prompts import _ENV

    names: set[str] = set()
    for source in sources:
        names |= meta.find_undeclared_variables(_ENV.parse(source))
    return sorted(names)


# ---------------------------------------------------------------- the service


class Service:
    """Everything a request needs: models (pool), tasks (composed on first use), scheduler and metrics."""

    def __init__(self, run: RunConfig, overrides: list[str] | tuple[str, ...] = ()):
        self.run = run
        self.overrides = [o for o in overrides if not o.lstrip("+~").startswith(("task=", "task.", "serve."))]
        self.metrics = Metrics()
        self.specs: dict[str, ModelSpec] = {run.model.name: ModelSpec(run.model.name, run.model)}
        others = [o for o in self.overrides if not o.lstrip("+~").startswith(("model=", "model."))]
        for name in run.serve.models:
            if Path(name).expanduser().is_dir():
                self.specs[name] = checkpoint_spec(name)
            elif name not in self.specs:
                self.specs[name] = ModelSpec(name, compose([*others, f"model={name}"]).model)
        sv = run.serve
        budget = None if sv.memory_budget_mb is None else int(sv.memory_budget_mb * 2**20)
        self.pool = ModelPool(
            {name: (lambda spec=spec: load_served(spec)) for name, spec in self.specs.items()},
            idle_release_s=sv.idle_release_s,
            memory_budget_bytes=budget,
            on_change=self.metrics.model_changed,
        )
        self.scheduler = Scheduler(
            self.run_batch,
            batch_size=sv.batch_size,
            max_wait_s=sv.max_wait_ms / 1000,
            policy=sv.policy,
            on_batch=self.metrics.batch_size.observe,
            on_queue=self.metrics.queue_depth.set,
        )
        self._tasks: dict[tuple[str, str], TaskState] = {}
        self._task_names = sorted({run.task.name, *group_options("task")})
        self._task_lock = threading.Lock()  # Hydra composition and task loading, one at a time
        self._embedder: Any = None  # MiniLM, for prompt.demo_selection=nearest
        self._embed_lock = threading.Lock()

    # ------------------------------------------------------------ resolving names

    def spec(self, name: str | None) -> ModelSpec:
        name = name or self.run.model.name
        if name not in self.specs:
            raise BadRequest(404, f"unknown model {name!r}; served: {', '.join(self.specs)}")
        return self.specs[name]

    def task_names(self) -> list[str]:
        return self._task_names

    async def task_state(self, name: str | None, spec: ModelSpec | None = None) -> TaskState:
        """The task ``name`` (default: the server's; for a fine-tuned checkpoint, the task it was trained on,
        rendered with the prompt it was trained with), composed with the server's overrides and cached; the
        demo pool is loaded when the prompt has demos."""
        own = spec.checkpoint if spec is not None else None
        if spec is not None and spec.head and name not in (None, own.task.name):
            raise BadRequest(
                422, f"model {spec.name!r} is a classifier fine-tuned on task {own.task.name!r}, not {name!r}"
            )
        name = name or (own.task.name if own is not None else self.run.task.name)
        key = (name, spec.name if own is not None and name == own.task.name else "")
        if key not in self._tasks:
            if name not in self.task_names():
                raise BadRequest(404, f"unknown task {name!r}; available: {', '.join(self.task_names())}")
            await asyncio.to_thread(self._load_task, key, own if key[1] else None)
        return self._tasks[key]

    def _load_task(self, key: tuple[str, str], own: RunConfig | None) -> None:
        from ..splits import split_task
        from ..tasks import Task, load_task, make_hook

        with self._task_lock:
            if key in self._tasks:
                return
            name = key[0]
            run = own or (self.run if name == self.run.task.name else compose([*self.overrides, f"task={name}"]))
            cfg = run.task
            if run.prompt.k_shot > 0:
                task = load_task(cfg, resolve_data_dir(run.data_dir))
                splits = split_task(task, run.split_seed, run.dev_size, run.limit)
                task = Task(cfg=cfg, hook=task.hook, rows={"train": splits.train})
            else:
                task = Task(cfg=cfg, hook=make_hook(cfg), rows={"train": []})
            self._tasks[key] = TaskState(
                key=key,
                run=run,
                task=task,
                fields=template_fields(cfg.templates[run.prompt.template]),
                target_fields=template_fields(cfg.target),
            )

    # ------------------------------------------------------------ preparing requests

    def check_length(self, what: str, text: str) -> None:
        limit = self.run.serve.max_input_chars
        if len(text) > limit:
            raise BadRequest(413, f"{what} is {len(text)} characters; this server takes at most {limit}")

    def check_new_tokens(self, value: int | None, lowest: int = 1) -> None:
        top = self.run.serve.max_new_tokens
        if value is not None and not lowest <= value <= top:
            raise BadRequest(422, f"max_new_tokens must be in {lowest}..{top}, got {value}")

    def render(self, state: TaskState, row: dict[str, Any]) -> tuple[Any, bool]:
        """One input row rendered exactly as the harness renders an eval row: (Example, has a gold target).

        A row without the target's fields is rendered with a placeholder target (the demos keep theirs)."""
        from ..lm.hf import minilm_embedder
        from ..prompts import render_examples
        from ..tasks import Task

        self.check_length("input", json.dumps(row, ensure_ascii=False))
        if any(k.startswith("_") for k in row):
            raise BadRequest(422, "input field names must not start with '_'")
        cfg = state.task.cfg
        has_target = all(f in row for f in state.target_fields)
        if not has_target:
            defined = " and ".join(f"{f} is defined" for f in state.target_fields) or "true"
            placeholder = "0" if cfg.type == "multiple_choice" else ""
            cfg = dataclasses.replace(
                cfg, target=f"{{% if {defined} %}}{cfg.target}{{% else %}}{placeholder}{{% endif %}}"
            )
        prompt = state.run.prompt
        view = Task(cfg=cfg, hook=state.task.hook, rows={"eval": [{**row, "_id": "input"}], **state.task.rows})
        try:
            if prompt.demo_selection == "nearest" and prompt.k_shot > 0:
                with self._embed_lock:  # the embedder's memo is not thread-safe
                    self._embedder = self._embedder or minilm_embedder()
                    (example,) = render_examples(view, prompt, state.run.seed, self._embedder)
            else:
                (example,) = render_examples(view, prompt, state.run.seed)
        except ConfigError as exc:
            raise BadRequest(422, f"template error: {exc}") from None
        return example, has_target

    # ------------------------------------------------------------ running batches (worker thread)

    def run_batch(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """Run one batch on the worker thread. ``key`` is (operation, model name, ...): ``score`` (a task's
        scorer), ``head`` (a classification head) or ``text`` (raw prompts through generate_until)."""
        op, model_name = key[0], key[1]
        with self.pool.acquire(model_name) as served:
            start = time.perf_counter()
            if op == "score":
                results, tokens = self._score(served, key, payloads)
            elif op == "head":
                results, tokens = self._head(served, key, payloads)
            else:
                results, tokens = self._text(served, key, payloads)
            self.metrics.batch_done(model_name, tokens, time.perf_counter() - start)
        return results

    def _score(self, served: Served, key: Hashable, examples: list[Any]) -> tuple[list[Any], int]:
        from ..evaluate import score_examples
        from ..prompts import chat_tokenizer

        state: TaskState = self._tasks[key[2]]
        task = state.task
        max_new_tokens, until = key[3], key[4]
        if task.cfg.type == "generation" and max_new_tokens is not None:
            generation = dataclasses.replace(task.cfg.generation, max_new_tokens=max_new_tokens, until=list(until))
            task = dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, generation=generation))
        method = dataclasses.replace(state.run.method, batch_size=len(examples))
        chat = chat_tokenizer(state.run.prompt, served.tokenizer)
        predictions, stats, _ = score_examples(served.lm, task, examples, method, chat)
        return predictions, stats.tokens

    def _head(self, served: Served, key: Hashable, examples: list[Any]) -> tuple[list[Any], int]:
        from ..train.run import classify

        state: TaskState = self._tasks[key[2]]
        predictions, _, tokens = classify(served.head, served.tokenizer, state.task, state.run, examples, served.device)
        return predictions, tokens

    def _text(self, served: Served, key: Hashable, payloads: list[Any]) -> tuple[list[Any], int]:
        """Completions of text prompts, token-id prompts (:mod:`.completions`) and chats (message lists,
        rendered with the model's chat template), each kind in one batch."""
        from ..scoring import generate_until
        from .completions import chat_prompt, id_completions

        if served.lm is None:
            raise BadRequest(422, f"model {served.spec.name!r} is a classification head; it does not generate text")
        max_new_tokens, until, logprobs, echo = key[2], list(key[3]), key[4], key[5]
        results: list[Any] = [None] * len(payloads)
        ids = [i for i, p in enumerate(payloads) if isinstance(p, list) and (not p or isinstance(p[0], int))]
        prompts = {i: p for i, p in enumerate(payloads) if i not in ids}
        tokens = 0
        if ids:
            token_prompts = [payloads[i] for i in ids]
            answers, tokens = id_completions(served.lm, token_prompts, max_new_tokens, until, logprobs, echo)
            for i, answer in zip(ids, answers):
                results[i] = BadRequest(*answer) if isinstance(answer, tuple) else answer
        for i, p in list(prompts.items()):
            if isinstance(p, dict):  # a chat
                if not getattr(served.tokenizer, "chat_template", None):
                    results[i] = BadRequest(422, f"model {served.spec.name!r} has no chat template")
                    del prompts[i]
                else:
                    prompts[i] = chat_prompt(served.tokenizer, p["messages"])
        texts = [""] * len(prompts)
        if max_new_tokens > 0 and prompts:
            texts, stats = generate_until(served.lm, list(prompts.values()), until, max_new_tokens, len(prompts), False)
            tokens += stats.tokens
        for (i, p), t in zip(prompts.items(), texts):
            results[i] = token_logprobs(served.lm, p, t, logprobs, echo, max_new_tokens)
        return results, tokens

    # ------------------------------------------------------------ request handlers

    async def submit(self, key: Hashable, payload: Any, priority: float) -> tuple[Any, BatchInfo]:
        return await self.scheduler.submit(key, payload, priority)

    async def task(self, body: TaskRequest, only: str | None = None) -> dict[str, Any]:
        """/task (dispatch on the task's type and the model's kind) and /classify (``only`` multiple_choice)."""
        from ..tasks import choice_prediction

        spec = self.spec(body.model)
        state = await self.task_state(body.task, spec)
        cfg = state.task.cfg
        if only is not None and cfg.type != only:
            raise BadRequest(422, f"task {cfg.name!r} is a {cfg.type} task; /classify takes multiple_choice tasks")
        self.check_new_tokens(body.max_new_tokens)
        if state.run.prompt.demo_selection == "nearest" and state.run.prompt.k_shot > 0:
            # embeds the demo pool on first use (and each input): off the event loop, one at a time
            example, has_target = await asyncio.to_thread(self.render, state, body.input)
        else:
            example, has_target = self.render(state, body.input)
        if spec.head:
            key: tuple = ("head", spec.name, state.key)
            kind = "classification_head"
        else:
            gen = cfg.generation
            stop = tuple(body.stop if body.stop is not None else gen.until)
            new = body.max_new_tokens if body.max_new_tokens is not None else gen.max_new_tokens
            key = ("score", spec.name, state.key, *((new, stop) if cfg.type == "generation" else (None, ())))
            kind = cfg.type
        prediction, info = await self.submit(key, example, body.priority)
        out: dict[str, Any] = {"task": cfg.name, "model": spec.name, "type": kind}
        if cfg.type == "multiple_choice":
            index = choice_prediction("acc", prediction["scores"], prediction["choices"])
            out.update(
                label=example.choices[index],
                prediction=index,
                choices=example.choices,
                loglikelihoods=prediction["scores"],
            )
        else:
            out.update(output=prediction["output"], answer=prediction["prediction"])
        if has_target:
            out["target"] = example.target
        out["batch"] = dataclasses.asdict(info)
        return out

    async def generate(self, body: GenerateRequest) -> dict[str, Any]:
        spec = self.spec(body.model)
        self.check_new_tokens(body.max_new_tokens)
        if (body.prompt is None) == (body.input is None):
            raise BadRequest(422, "give either prompt (raw text) or input (a row for the task's template)")
        if body.prompt is not None:
            if body.task is not None:
                raise BadRequest(422, "task applies to input; a raw prompt is sent to the model as it is")
            self.check_length("prompt", body.prompt)
            new = body.max_new_tokens if body.max_new_tokens is not None else 64
            key = ("text", spec.name, new, tuple(body.stop or ()), None, False)
            result, info = await self.submit(key, body.prompt, body.priority)
            return {"model": spec.name, "text": result["text"], "batch": dataclasses.asdict(info)}
        state = await self.task_state(body.task, spec)
        if state.task.cfg.type != "generation":
            raise BadRequest(
                422, f"task {state.task.cfg.name!r} is {state.task.cfg.type}; /generate takes generation tasks"
            )
        request = TaskRequest(
            input=body.input or {},
            task=state.task.cfg.name,
            model=body.model,
            priority=body.priority,
            max_new_tokens=body.max_new_tokens,
            stop=body.stop,
        )
        out = await self.task(request)
        return {**out, "text": out["output"]}

    async def completions(self, body: CompletionRequest) -> dict[str, Any]:
        spec = self.spec(body.model)
        if body.stream or body.n != 1:
            raise BadRequest(400, "stream and n > 1 are not supported; send one request per completion")
        if body.temperature not in (None, 0, 0.0):
            raise BadRequest(400, f"only greedy decoding is served (temperature 0), got temperature={body.temperature}")
        if body.logprobs is not None and not 0 <= body.logprobs <= 20:
            raise BadRequest(422, f"logprobs must be in 0..20, got {body.logprobs}")
        self.check_new_tokens(body.max_tokens, lowest=0)
        from .completions import MAX_PROMPTS

        one = isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int))
        prompts: list[Any] = [body.prompt] if one else list(body.prompt)
        if not prompts:
            raise BadRequest(422, "prompt is an empty list")
        if len(prompts) > MAX_PROMPTS:
            raise BadRequest(413, f"{len(prompts)} prompts in one request; this server takes at most {MAX_PROMPTS}")
        limit = self.run.serve.max_input_chars
        for p in prompts:
            if isinstance(p, str):
                self.check_length("prompt", p)
            elif len(p) > limit:  # a token is at least a character
                raise BadRequest(413, f"a prompt of {len(p)} tokens; this server takes at most {limit}")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        key = ("text", spec.name, body.max_tokens, stop, body.logprobs, body.echo)
        done = await asyncio.gather(*(self.submit(key, p, 0.0) for p in prompts))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, (result, _) in enumerate(done):
            prompt_tokens += result["prompt_tokens"]
            completion_tokens += result["completion_tokens"]
            choices.append(
                {
                    "index": i,
                    "text": (prompts[i] if body.echo and isinstance(prompts[i], str) else "") + result["text"],
                    "logprobs": result["logprobs"],
                    "finish_reason": result["finish_reason"],
                }
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": spec.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def chat_completions(self, body: Any) -> dict[str, Any]:
        """/v1/chat/completions: the messages through the model's chat template, then greedy generation."""
        from .completions import CHAT_ROLES

        spec = self.spec(body.model)
        if body.stream or body.n != 1:
            raise BadRequest(400, "stream and n > 1 are not supported; send one request per completion")
        if body.temperature not in (None, 0, 0.0):
            raise BadRequest(400, f"only greedy decoding is served (temperature 0), got temperature={body.temperature}")
        new = body.max_completion_tokens or body.max_tokens or 64
        self.check_new_tokens(new)
        messages = [m.model_dump() for m in body.messages]
        if not messages or any(m["role"] not in CHAT_ROLES for m in messages):
            raise BadRequest(422, f"messages must be a non-empty list with roles in {', '.join(CHAT_ROLES)}")
        self.check_length("messages", json.dumps(messages, ensure_ascii=False))
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        result, _ = await self.submit(("text", spec.name, new, stop, None, False), {"messages": messages}, 0.0)
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": spec.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result["text"]},
                    "finish_reason": result["finish_reason"],
                }
            ],
            "usage": {**usage, "total_tokens": sum(usage.values())},
        }

    async def describe_task(self, name: str) -> dict[str, Any]:
        state = await self.task_state(name)
        cfg = state.task.cfg
        return {
            "name": cfg.name,
            "type": cfg.type,
            "template": cfg.templates[state.run.prompt.template],
            "fields": state.fields,
            "target_fields": state.target_fields,
            "choices": list(cfg.choices or []),
            "k_shot": state.run.prompt.k_shot,
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.run.model.name,
            "task": self.run.task.name,
            "models_loaded": list(self.pool.loaded),
            "queue_depth": self.scheduler.depth,
        }


def token_logprobs(lm: Any, prompt: str, text: str, top: int | None, echo: bool, max_new_tokens: int) -> dict:
    """A completion's token counts and, when ``top`` is given, OpenAI's logprobs object: each completion
    token (with ``echo`` also the prompt's; the first has none) with its log-probability and the ``top``
    most likely tokens at its position."""
    import torch

    tok = lm.tokenizer
    ctx = tok(prompt, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    whole = tok(prompt + text, add_special_tokens=False)["input_ids"] if text else ctx
    cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else tok(text, add_special_tokens=False)["input_ids"]
    finish = "length" if max_new_tokens > 0 and len(cont) >= max_new_tokens else "stop"
    out: dict[str, Any] = {
        "text": text,
        "prompt_tokens": len(ctx),
        "completion_tokens": len(cont),
        "finish_reason": finish,
        "logprobs": None,
    }
    if top is None:
        return out
    ids = ctx + cont
    if len(ids) > lm.max_length:
        return BadRequest(413, f"prompt and completion are {len(ids)} tokens; the model takes at most {lm.max_length}")
    start = 1 if echo else len(ctx)
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = 0 if echo else len(prompt)
    if echo:
        tokens.append(tok.decode([ids[0]]))
        token_lps.append(None)
        tops.append(None)
        offsets.append(0)
        offset = len(tokens[0])
    for i in range(max(start, 1), len(ids)):
        piece = tok.decode([ids[i]])
        tokens.append(piece)
        token_lps.append(float(logprobs[i - 1, ids[i]]))
        values, indices = logprobs[i - 1].topk(top) if top > 0 else (torch.empty(0), torch.empty(0, dtype=torch.long))
        tops.append({tok.decode([int(t)]): float(v) for v, t in zip(values, indices)})
        offsets.append(offset)
        offset += len(piece)
    out["logprobs"] = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
    return out


# ---------------------------------------------------------------- the FastAPI app


def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving ``service``; the scheduler and the idle-model reaper run in its lifespan."""
    from .page import PAGE

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.scheduler.start()
        reaper = asyncio.get_running_loop().create_task(_reap(service))
        try:
            yield
        finally:
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            await service.scheduler.stop()
            service.pool.release_all()

    app = FastAPI(title="autoglm-bench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    metrics = service.metrics

    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return _error(exc.status, str(exc))

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        return _error(422, one_line(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        return _error(*_describe_validation(exc.errors()))

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tasks")
    async def tasks():
        return {"default": service.run.task.name, "tasks": service.task_names(), "models": list(service.specs)}

    @app.get("/tasks/{name}")
    async def task_info(name: str):
        return await service.describe_task(name)

    @app.post("/classify")
    async def classify(request: Request):
        return JSONResponse(await service.task(await parse(request, TaskRequest), only="multiple_choice"))

    @app.post("/task")
    async def task(request: Request):
        return JSONResponse(await service.task(await parse(request, TaskRequest)))

    @app.post("/generate")
    async def generate(request: Request):
        return JSONResponse(await service.generate(await parse(request, GenerateRequest)))

    @app.post("/v1/completions")
    async def completions(request: Request):
        return JSONResponse(await service.completions(await parse(request, CompletionRequest)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from .completions import ChatRequest

        return JSONResponse(await service.chat_completions(await parse(request, ChatRequest)))

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "autoglm-bench"} for name in service.specs],
        }

    return app


class CountRequests:
    """ASGI middleware: counts every request by endpoint (route path) and status, and times it. An error that
    escapes the handlers is a bug, not bad input: the client gets one line, the log gets the traceback."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if status:
                raise  # the response had begun; the server closes the connection
            status = 500
            await _error(500, f"internal error: {type(exc).__name__}: {one_line(exc)}")(scope, receive, send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status or 500)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


async def _reap(service: Service) -> None:
    """Release idle models every so often (a quarter of the idle delay, at most every second)."""
    period = min(1.0, service.pool.idle_release_s / 4)
    while True:
        await asyncio.sleep(period)
        await asyncio.to_thread(service.pool.release_idle)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body as ``model``, validated by pydantic directly (cheaper per request than FastAPI's
    body parameters); any problem is a :class:`BadRequest` with one line."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise BadRequest(*_describe_validation(exc.errors())) from None


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """(status, one line) for pydantic's errors: malformed JSON is 400, a bad field 422."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return 400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    loc = list(first.get("loc", ()))
    where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"
    if first.get("type") == "extra_forbidden":
        return 422, f"unknown field {where!r}"
    return 422, f"{where}: {first['msg']}"


# ---------------------------------------------------------------- running it


class ServerThread:
    """A uvicorn server on a background thread (tests, benchmarks): ``url`` once started, ``stop()`` to end."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.service = service
        self.thread = threading.Thread(target=self.server.run, name="autoglm-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.url = f"http://{host}:{sock.getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(run: RunConfig, overrides: list[str]) -> None:
    """Serve until interrupted, printing the address (``serve.port=0``: the free port it got)."""
    import uvicorn

    service = Service(run, overrides)
    config = uvicorn.Config(create_app(service), host=run.serve.host, port=run.serve.port, log_level="warning")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"serving {run.model.name} (task {run.task.name}) on http://{run.serve.host}:{port}", flush=True)
        await task

    asyncio.run(main())
