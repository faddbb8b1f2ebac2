"""The service: everything a request needs (models, tasks, scheduler, metrics) and what each endpoint does.

Every task request renders its input row with the task's template, instruction, demos and verbalizer
(:func:`~autoglm_bench.prompts.render_examples`) and is scored by
:func:`~autoglm_bench.methods.evaluate.score_examples`, the function ``method=evaluate`` uses, so a classification
equals the harness's prediction for the same row. Every limit (:mod:`.limits`) is checked before a request
is queued; requests run in batches (:mod:`.scheduler`) on models from a pool that loads them off the worker
(:mod:`.pool`); :mod:`.metrics` counts everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Hashable
from typing import Any

from ..config import ConfigError, RunConfig
from .bodies import CHAT_ROLES, MAX_PRIORITY, ChatRequest, CompletionRequest, GenerateRequest, TaskRequest
from .errors import BadRequest
from .images import chat_messages, row_images, without_images
from .limits import Limits
from .metrics import Metrics
from .pool import ModelPool, load_served
from .scheduler import BatchInfo, Scheduler
from .specs import ModelSpec, Served, model_specs
from .tasks import TaskState, load_tasks

log = logging.getLogger("autoglm_bench.serve")

LOAD_TRIES = 3  # a model released again (to make room) between its load and a request's look at it


class Service:
    """Models (pool), tasks (all loaded here, at start), limits, scheduler and metrics of one server."""

    def __init__(self, run: RunConfig, overrides: list[str] | tuple[str, ...] = ()):
        self.run = run
        self.overrides = [o for o in overrides if not o.lstrip("+~").startswith(("task=", "task.", "serve."))]
        self.limits = Limits(run.serve)
        self.metrics = Metrics()
        others = [o for o in self.overrides if not o.lstrip("+~").startswith(("model=", "model."))]
        self.specs: dict[str, ModelSpec] = model_specs(run, others)
        self.tasks = load_tasks(run, self.overrides, self.specs)
        sv = run.serve
        budget = None if sv.memory_budget_mb is None else int(sv.memory_budget_mb * 2**20)
        self.pool = ModelPool(
            {name: functools.partial(load_served, spec) for name, spec in self.specs.items()},
            idle_release_s=sv.idle_release_s,
            memory_budget_bytes=budget,
            on_change=self.metrics.model_changed,
            on_loaded=self._loaded,
        )
        self.scheduler = Scheduler(
            self.run_batch,
            batch_size=sv.batch_size,
            max_wait_s=sv.max_wait_ms / 1000,
            policy=sv.policy,
            max_queue=sv.max_queue,
            max_queue_wait_s=sv.max_queue_wait_s,
            priority_span=2 * MAX_PRIORITY,
            timeout_s=sv.request_timeout_s,
            lease=lambda key: self.pool.lease(key[1]),
            on_batch=self.metrics.batch_size.observe,
            on_queue=self.metrics.queue_depth.set,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[str, list[asyncio.Future]] = {}  # requests waiting for a model's load
        self._embed_lock = threading.Lock()  # the embedder's memo is not thread-safe
        self.stopping = threading.Event()  # set at shutdown: generation in progress ends after its current token

    def start(self) -> None:
        """Start on the running event loop (the app's lifespan)."""
        self._loop = asyncio.get_running_loop()
        self.scheduler.start()

    async def stop(self, wait_s: float = 5.0) -> None:
        """Answer what is queued 503, end generation in progress, wait up to ``wait_s`` for the batch in
        progress to end, and release the models."""
        self.stopping.set()
        await self.scheduler.stop()
        await asyncio.to_thread(self.scheduler.worker.wait_idle, wait_s)
        self.pool.release_all()

    # ------------------------------------------------------------ models

    def spec(self, name: str | None) -> ModelSpec:
        name = name or self.run.model.name
        if name not in self.specs:
            raise BadRequest(404, f"unknown model {name!r}; served: {', '.join(self.specs)}")
        return self.specs[name]

    def _loaded(self, name: str, error: BaseException | None) -> None:
        """The pool's ``on_loaded`` (on the loading thread): wake what waits for this model."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._settle_load, name, error)

    def _settle_load(self, name: str, error: BaseException | None) -> None:
        failure = None
        if error is not None:  # the reason may name local paths: it goes to the log, not to clients
            reason = type(error).__name__
            failure = BadRequest(503, f"model {name!r} could not be loaded ({reason}); see the server log")
        for future in self._waiting.pop(name, []):
            if not future.done():
                future.set_result(failure)
        if failure is not None:
            self.scheduler.fail(lambda key: key[1] == name, failure)
        self.scheduler.wake()

    async def model(self, spec: ModelSpec, deadline: float) -> Served:
        """The loaded model ``spec``, loaded on a thread of the pool's if it is not (the worker meanwhile
        serves loaded models); 503 when its load fails, 504 when the deadline passes first."""
        assert self._loop is not None, "Service.start() was not called"
        for _ in range(LOAD_TRIES):
            served = self.pool.peek(spec.name)
            if served is not None:
                return served
            future = self._loop.create_future()
            self._waiting.setdefault(spec.name, []).append(future)
            if not self.pool.request_load(spec.name):  # it was loaded meanwhile
                self._waiting[spec.name].remove(future)
                continue
            try:
                failure = await asyncio.wait_for(future, timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BadRequest(504, f"model {spec.name!r} was not loaded within the request deadline") from None
            if failure is not None:
                raise failure
        raise BadRequest(503, f"model {spec.name!r} was released again while loading; retry")

    # ------------------------------------------------------------ tasks and rendering

    def task_state(self, name: str | None, spec: ModelSpec) -> TaskState:
        """The task ``name`` (default: the server's; for a fine-tuned checkpoint, the task it was trained on,
        rendered with the prompt it was trained with), as loaded at start."""
        own = spec.checkpoint
        if spec.head and name not in (None, own.task.name):
            raise BadRequest(
                422, f"model {spec.name!r} is a classifier fine-tuned on task {own.task.name!r}, not {name!r}"
            )
        name = name or (own.task.name if own is not None else self.run.task.name)
        key = (name, spec.name if own is not None and name == own.task.name else "")
        if key not in self.tasks.states:
            raise BadRequest(404, f"unknown task {name!r}; served: {', '.join(self.tasks.names)}")
        return self.tasks.states[key]

    def render(self, state: TaskState, row: dict[str, Any]) -> tuple[Any, bool]:
        """One input row rendered exactly as the harness renders an eval row: (Example, has a gold target).

        A row without the target's fields is rendered with a placeholder target (the demos keep theirs)."""
        from ..data.tasks import Task
        from ..prompts import render_examples

        cfg = state.task.cfg
        has_target = all(f in row for f in state.target_fields)
        if not has_target:
            defined = " and ".join(f"{f} is defined" for f in state.target_fields) or "true"
            placeholder = "0" if cfg.type == "multiple_choice" else ""
            cfg = dataclasses.replace(
                cfg, target=f"{{% if {defined} %}}{cfg.target}{{% else %}}{placeholder}{{% endif %}}"
            )
        view = Task(cfg=cfg, hook=state.task.hook, rows={"eval": [{**row, "_id": "input"}], **state.task.rows})
        try:
            if self.nearest(state):
                with self._embed_lock:
                    (example,) = render_examples(view, state.run.prompt, state.run.seed, self.tasks.embedder)
            else:
                (example,) = render_examples(view, state.run.prompt, state.run.seed)
        except ConfigError as exc:
            raise BadRequest(422, f"template error: {exc}") from None
        return example, has_target

    @staticmethod
    def nearest(state: TaskState) -> bool:
        return state.run.prompt.demo_selection == "nearest" and state.run.prompt.k_shot > 0

    # ------------------------------------------------------------ running batches (worker thread)

    def run_batch(self, key: Hashable, served: Served, payloads: list[Any], deadline: float) -> list[Any]:
        """Run one batch on the worker thread. ``key`` is (operation, model name, ...): ``score`` (a task's
        scorer), ``head`` (a classification head) or ``text`` (raw prompts)."""
        import torch

        op, model_name = key[0], key[1]
        start = time.perf_counter()
        with torch.inference_mode():
            if op == "score":
                results, tokens = self._score(served, key, payloads)
            elif op == "head":
                results, tokens = self._head(served, key, payloads)
            elif op == "images":  # chat prompts with images (a vision-language model), one at a time
                results, stats = served.lm.generate_until(payloads, list(key[3]), key[2], progress=False)
                tokens = stats.tokens
            else:
                from .text import complete

                def abort() -> bool:
                    return self.stopping.is_set() or time.monotonic() > deadline

                rows = self.rows_per_pass(served.lm.max_length, payloads, [key[2]] * len(payloads))
                results, tokens = complete(served.lm, payloads, list(key[3]), key[2], key[4], key[5], rows, abort)
        self.metrics.batch_done(model_name, tokens, time.perf_counter() - start)
        return results

    def _score(self, served: Served, key: Hashable, examples: list[Any]) -> tuple[list[Any], int]:
        from ..methods.evaluate import score_examples
        from ..prompts import chat_tokenizer, prompt_text

        state = self.tasks.states[key[2]]
        task = state.task
        max_new_tokens, until = key[3], key[4]
        if task.cfg.type == "generation" and max_new_tokens is not None:
            generation = dataclasses.replace(task.cfg.generation, max_new_tokens=max_new_tokens, until=list(until))
            task = dataclasses.replace(task, cfg=dataclasses.replace(task.cfg, generation=generation))
        chat = chat_tokenizer(state.run.prompt, served.tokenizer)
        contexts = [prompt_text(task.cfg, ex.messages, chat) for ex in examples]
        if task.cfg.type == "generation":
            extra = [task.cfg.generation.max_new_tokens] * len(examples)
        else:  # the choices sit side by side after the context
            extra = [sum(len(c.encode()) for c in ex.choices) for ex in examples]
        rows = self.rows_per_pass(served.lm.max_length, contexts, extra)
        method = dataclasses.replace(state.run.method, batch_size=rows)
        predictions, stats, _ = score_examples(served.lm, task, examples, method, chat)
        return predictions, stats.tokens

    def rows_per_pass(self, max_length: int, texts: list[Any], extra: list[int]) -> int:
        """Rows per forward pass, so that rows x the longest row stays within ``serve.max_batch_tokens`` (at
        least one row). A text's tokens are estimated by its UTF-8 bytes (a byte-level tokenizer's most),
        capped at the model's length; token-id prompts count their ids."""
        sizes = [len(t) if isinstance(t, list) else min(max_length, len(t.encode()) + 2) for t in texts]
        longest = max(n + e for n, e in zip(sizes, extra))
        return max(1, min(len(texts), self.run.serve.max_batch_tokens // longest))

    def _head(self, served: Served, key: Hashable, examples: list[Any]) -> tuple[list[Any], int]:
        from ..methods.finetune.training import classify

        state = self.tasks.states[key[2]]
        predictions, _, tokens = classify(
            served.head,
            served.tokenizer,
            state.task,
            examples,
            served.device,
            state.run.method.eval_batch_size,
            state.run.model.max_length,
        )
        return predictions, tokens

    # ------------------------------------------------------------ request handlers

    def check_priority(self, priority: float, authenticated: bool) -> None:
        if priority > 0 and not authenticated:
            raise BadRequest(
                403, f"priority {priority:g} is above the default 0; only authenticated clients may raise it"
            )

    async def task(self, body: TaskRequest, authenticated: bool, only: str | None = None) -> dict[str, Any]:
        """/task (dispatch on the task's type and the model's kind) and /classify (``only`` multiple_choice)."""
        from ..metrics import choice_prediction

        deadline = time.monotonic() + self.run.serve.request_timeout_s
        self.check_priority(body.priority, authenticated)
        spec = self.spec(body.model)
        state = self.task_state(body.task, spec)
        cfg = state.task.cfg
        if only is not None and cfg.type != only:
            raise BadRequest(422, f"task {cfg.name!r} is a {cfg.type} task; /classify takes multiple_choice tasks")
        self.limits.new_tokens(body.max_new_tokens)
        self.limits.stop(body.stop)
        self.limits.row(without_images(cfg, body.input))  # images: serve.max_images, max_image_pixels
        if self.nearest(state) or cfg.images:  # embeds the input or decodes its images: off the event loop
            row = await asyncio.to_thread(row_images, self.run.serve, cfg, body.input)
            example, has_target = await asyncio.to_thread(self.render, state, row)
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
        prediction, info = await self.scheduler.submit(key, example, body.priority, deadline)
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

    async def generate(self, body: GenerateRequest, authenticated: bool) -> dict[str, Any]:
        if (body.prompt is None) == (body.input is None):
            raise BadRequest(422, "give either prompt (raw text) or input (a row for the task's template)")
        if body.prompt is None:
            request = TaskRequest(
                input=body.input or {},
                task=body.task,
                model=body.model,
                priority=body.priority,
                max_new_tokens=body.max_new_tokens,
                stop=body.stop,
            )
            state = self.task_state(body.task, self.spec(body.model))
            if state.task.cfg.type != "generation":
                raise BadRequest(
                    422, f"task {state.task.cfg.name!r} is {state.task.cfg.type}; /generate takes generation tasks"
                )
            out = await self.task(request, authenticated)
            return {**out, "text": out["output"]}
        if body.task is not None:
            raise BadRequest(422, "task applies to input; a raw prompt is sent to the model as it is")
        self.limits.new_tokens(body.max_new_tokens)
        new = body.max_new_tokens if body.max_new_tokens is not None else min(64, self.run.serve.max_new_tokens)
        results, infos, spec = await self.complete(
            body.model, [body.prompt], new, body.stop or [], None, False, body.priority, authenticated
        )
        return {"model": spec.name, "text": results[0]["text"], "batch": dataclasses.asdict(infos[0])}

    async def completions(self, body: CompletionRequest, authenticated: bool) -> dict[str, Any]:
        if body.stream or body.n != 1:
            raise BadRequest(400, "stream and n > 1 are not supported; send one request per completion")
        if body.temperature not in (None, 0, 0.0):
            raise BadRequest(400, f"only greedy decoding is served (temperature 0), got temperature={body.temperature}")
        self.limits.new_tokens(body.max_tokens, lowest=0, name="max_tokens")
        self.limits.logprobs(body.logprobs)
        one = isinstance(body.prompt, str) or bool(body.prompt and isinstance(body.prompt[0], int))
        prompts: list[Any] = [body.prompt] if one else list(body.prompt)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        results, _, spec = await self.complete(
            body.model, prompts, body.max_tokens, stop, body.logprobs, body.echo, 0.0, authenticated
        )
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, result in enumerate(results):
            prompt_tokens += result["prompt_tokens"]
            completion_tokens += result["completion_tokens"]
            choices.append(
                {
                    "index": i,
                    "text": result["text"],  # with echo, the prompt's text first
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

    async def chat_completions(self, body: ChatRequest, authenticated: bool) -> dict[str, Any]:
        """/v1/chat/completions: the messages through the model's chat template, then as a text prompt."""
        if body.stream or body.n != 1:
            raise BadRequest(400, "stream and n > 1 are not supported; send one request per completion")
        if body.temperature not in (None, 0, 0.0):
            raise BadRequest(400, f"only greedy decoding is served (temperature 0), got temperature={body.temperature}")
        new = body.max_completion_tokens or body.max_tokens or min(64, self.run.serve.max_new_tokens)
        self.limits.new_tokens(new, name="max_tokens")
        if any(m.get("role") not in CHAT_ROLES or "content" not in m for m in body.messages):
            raise BadRequest(422, f"each message needs a role ({', '.join(CHAT_ROLES)}) and a content")
        spec = self.spec(body.model)
        if spec.head:
            raise BadRequest(422, f"model {spec.name!r} is a classification head; it does not generate text")
        served = await self.model(spec, time.monotonic() + self.run.serve.request_timeout_s)
        tok = served.tokenizer
        if not getattr(tok, "chat_template", None):
            raise BadRequest(422, f"model {spec.name!r} has no chat template")
        messages, images = await asyncio.to_thread(chat_messages, self.run.serve, body.messages)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if images:
            results = [await self.complete_with_images(served, spec, text, images, new, stop)]
        else:
            results, _, spec = await self.complete(body.model, [text], new, stop, None, False, 0.0, authenticated)
        usage = {k: results[0][k] for k in ("prompt_tokens", "completion_tokens")}
        message = {"role": "assistant", "content": results[0]["text"]}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": spec.name,
            "choices": [{"index": 0, "message": message, "finish_reason": results[0]["finish_reason"]}],
            "usage": {**usage, "total_tokens": sum(usage.values())},
        }

    async def complete_with_images(
        self, served: Served, spec: ModelSpec, text: str, images: list[Any], new_tokens: int, stop: list[str]
    ) -> dict[str, Any]:
        """One chat prompt with images through a vision-language model (greedy), its limits checked first."""
        from ..data.images import ImageText

        if not hasattr(served.lm, "processor"):
            raise BadRequest(422, f"model {spec.name!r} reads text only; image_url parts need a vision-language model")
        self.limits.text("prompt", text)
        self.limits.stop(stop)
        prompt = ImageText(text, tuple(images))
        try:
            enc = await asyncio.to_thread(served.lm.encode, *served.lm.inputs(prompt))
        except ConfigError as exc:
            raise BadRequest(413, str(exc)) from None
        n = enc["input_ids"].shape[1]
        self.limits.tokens(spec.name, [n], new_tokens, served.lm.max_length)
        deadline = time.monotonic() + self.run.serve.request_timeout_s
        out, _ = await self.scheduler.submit(("images", spec.name, new_tokens, tuple(stop)), prompt, 0.0, deadline)
        done = len(served.tokenizer(out, add_special_tokens=False)["input_ids"])
        reason = "length" if done >= new_tokens else "stop"
        return {"text": out, "prompt_tokens": n, "completion_tokens": done, "finish_reason": reason}

    async def complete(
        self,
        model: str | None,
        prompts: list[Any],
        new_tokens: int,
        stop: list[str],
        logprobs: int | None,
        echo: bool,
        priority: float,
        authenticated: bool,
    ) -> tuple[list[dict[str, Any]], list[BatchInfo], ModelSpec]:
        """Raw prompts (text or token ids) through the model: every limit checked (text's tokens counted with
        the model's own tokenizer, token ids against its vocabulary) before any is queued."""
        from ..scoring import prefix_token_id, tok_encode

        deadline = time.monotonic() + self.run.serve.request_timeout_s
        self.check_priority(priority, authenticated)
        spec = self.spec(model)
        if spec.head:
            raise BadRequest(422, f"model {spec.name!r} is a classification head; it does not generate text")
        self.limits.prompts(prompts)
        self.limits.stop(stop)
        served = await self.model(spec, deadline)
        tok = served.tokenizer
        texts = iter(tok_encode(tok, [p for p in prompts if isinstance(p, str)], lead=tok.bos_token or ""))
        counts = [len(p) if isinstance(p, list) else len(next(texts) or [prefix_token_id(tok)]) for p in prompts]
        vocab = served.lm.model.get_input_embeddings().num_embeddings
        if any(max(p) >= vocab for p in prompts if isinstance(p, list)):
            raise BadRequest(422, f"token ids must be in 0..{vocab - 1}, the vocabulary of model {spec.name!r}")
        self.limits.tokens(spec.name, counts, new_tokens, served.lm.max_length)
        key = ("text", spec.name, new_tokens, tuple(stop), logprobs, echo)
        jobs = [asyncio.ensure_future(self.scheduler.submit(key, p, priority, deadline)) for p in prompts]
        try:
            done = await asyncio.gather(*jobs)
        except BaseException:
            for job in jobs:  # the others leave the queue
                job.cancel()
            raise
        return [result for result, _ in done], [info for _, info in done], spec

    def describe_task(self, name: str) -> dict[str, Any]:
        state = self.task_state(name, self.spec(None))
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
