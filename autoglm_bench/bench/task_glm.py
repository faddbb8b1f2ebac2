"""Train a small GLM-4-architecture model on tasks' train text so that prompts matter; print its folder.

``python -m autoglm_bench.bench task-glm --tasks sst2,rte,cb --task-weights 4,1,1 --data-dir ../shared/data``

A random-init tiny_glm predicts one class whatever the prompt, so zero-shot, few-shot and prompt search
would all tie at chance. This trains the tiny_glm architecture (:func:`autoglm_bench.lm.tiny_glm.build_tiny_glm`:
a ``Glm4ForCausalLM`` from a config, with the locally trained byte-level BPE tokenizer) on the TRAIN PART
of each task, as the split protocol defines it (:mod:`autoglm_bench.data.splits`: the train split less the
``dev_size`` dev rows drawn with ``split_seed``), so the dev rows every selection reads and the test rows
that are reported stay unseen. A task without a train split (BoolQ in the offline data) cannot be
trained on and is refused.

Each training sequence is 1 to ``max_demos + 1`` rows of one task (0 to ``max_demos`` demos and a
query), each rendered with the task's ``default`` template and followed by its gold label word (the
verbalizer), in the plain k-shot layout :func:`~autoglm_bench.prompts.prompt_text` produces; the loss
is on the label words only. Each batch is one task's, drawn with ``--task-weights`` (default uniform, so a
small task such as CB is seen as often as SST-2). Training is deterministic (seeded Python and torch RNGs,
a fixed torch thread count) and cached under ``$AUTOGLM_CACHE_DIR/tiny_glm_task_trained/<hash of the recipe>``, saved as
safetensors plus tokenizer plus ``task_glm_recipe.json`` (the recipe, rows per task, loss curve, time).

:func:`train_prompt_sensitive_glm` is the toy-task trainer of the prompt-search benchmark
(``autoglm_bench.bench.search``), the same loop on the synthetic toy task with its historical settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

TRAIN_RECIPE = 3  # bump when train_prompt_sensitive_glm changes, so cached models are rebuilt
TASK_GLM_RECIPE = 1  # bump when train_task_glm changes, so cached models are rebuilt

# The architecture this benchmark trains by default: tiny_glm made a little wider (hidden 128, MLP 512,
# 2 layers; 1.54M parameters with the 4096-token vocabulary, 1.05M of them the input and output embeddings)
# so that ~4 minutes on a shared 2-core CPU teach it SST-2 (500 steps). 4 layers learned more slowly per second.
TASK_GLM_TINY = {
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}


# ---------------------------------------------------------------- the shared training loop


def _train_loop(
    model: Any,
    tokenizer: Any,
    sources: list[tuple[Any, list[dict[str, Any]]]],
    steps: int,
    seed: int,
    lr: float,
    batch_size: int,
    max_demos: int,
    max_tokens: int | None = None,
    warmup_steps: int = 0,
    schedule: str = "constant",
    weights: list[float] | None = None,
    answer_logits_only: bool = False,
    micro_batch: int = 8,
    log_every: int = 0,
) -> list[float]:
    """Train ``model`` in place on sequences of ``sources`` rows; returns the loss of every step.

    ``sources`` is a list of (task config, rows). Per batch a source is drawn (with ``weights``, default
    uniform; no draw when there is one), then per sequence ``randint(1, max_demos + 1)`` rows of it, each
    rendered with its ``default`` template, the target delimiter and the gold answer (loss on the answer
    tokens only), then the few-shot delimiter; one task per batch keeps short tasks' batches short.
    ``max_tokens`` stops adding rows to a sequence once it would exceed that many tokens (the first row
    always stays, cut to its last ``max_tokens`` tokens). ``schedule``: ``constant``, or ``cosine`` decay
    to 10% after ``warmup_steps`` of linear warmup. ``answer_logits_only`` projects hidden states to the
    vocabulary only where an answer token is predicted (the same loss, a fraction of the output layer's
    cost); it also runs the batch as length-sorted micro-batches of ``micro_batch`` sequences (less
    padding) with gradients accumulated over the batch's answer tokens, so the loss and gradient are the
    whole batch's. With one source, no token limit, a constant schedule and full logits this is exactly the toy
    trainer's loop (same random draws, same batches, bit-identical weights).
    """
    import torch

    from autoglm_bench.prompts import demo_answer, render

    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = None
    if schedule == "cosine":

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, steps - warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}; allowed: constant, cosine")
    model.train()
    memo: dict[tuple[int, str], tuple[list[int], list[int]]] = {}

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def encoded(which: int, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        key = (which, row["_id"])
        if key not in memo:
            cfg = sources[which][0]
            memo[key] = (
                encode(render(cfg.templates["default"], row)),
                encode(cfg.target_delimiter + demo_answer(cfg, row)),
            )
        return memo[key]

    seps = [encode(cfg.fewshot_delimiter) for cfg, _ in sources]
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    start = time.perf_counter()
    with torch.enable_grad():
        for step in range(steps):
            ids, labels = [], []
            which = 0 if len(sources) == 1 else rng.choices(range(len(sources)), weights=weights)[0]
            rows, sep = sources[which][1], seps[which]
            for _ in range(batch_size):
                seq_ids: list[int] = []
                seq_labels: list[int] = []
                for r in (rng.choice(rows) for _ in range(rng.randint(1, max_demos + 1))):
                    context, answer = encoded(which, r)
                    if max_tokens is not None and seq_ids and len(seq_ids) + len(context) + len(answer) > max_tokens:
                        break
                    seq_ids += context + answer + sep
                    seq_labels += [-100] * len(context) + answer + [-100] * len(sep)  # the loss is on answers only
                if max_tokens is not None and len(seq_ids) > max_tokens:  # one row longer than the limit
                    seq_ids, seq_labels = seq_ids[-max_tokens:], seq_labels[-max_tokens:]
                ids.append(seq_ids)
                labels.append(seq_labels)
            # Right padding under causal attention never reaches a real token, so no attention mask is
            # needed, and on CPU the masked attention path is ~10x slower for this model.
            if answer_logits_only:
                loss = _answer_loss_backward(model, ids, labels, pad, micro_batch)
            else:
                width = max(map(len, ids))
                input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
                label_ids = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
                loss = model(input_ids=input_ids, labels=label_ids).loss
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
            if log_every and (step + 1) % log_every == 0:
                recent = losses[-log_every:]
                print(
                    f"step {step + 1}/{steps}: loss {sum(recent) / len(recent):.4f} "
                    f"({time.perf_counter() - start:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
    model.eval()
    return losses


def _answer_loss_backward(model: Any, ids: list[list[int]], labels: list[list[int]], pad: int, micro_batch: int) -> Any:
    """Backpropagate the mean cross-entropy over all answer tokens of a batch, computed in length-sorted
    micro-batches with logits only at answer positions; returns the loss (detached)."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    n_answer = sum(1 for x in labels for t in x[1:] if t != -100)
    total = torch.zeros(())
    for b in range(0, len(order), micro_batch):
        chunk = order[b : b + micro_batch]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in chunk])
        label_ids = torch.tensor([labels[i] + [-100] * (width - len(labels[i])) for i in chunk])
        hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
        targets = label_ids[:, 1:]
        keep = targets != -100
        logits = model.lm_head(hidden[keep]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / max(1, n_answer)
        loss.backward()
        total += loss.detach()
    return total


def save_model(model: Any, tokenizer: Any, target: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the model (safetensors) and tokenizer to ``target`` atomically (a staging folder renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if extra is not None:
            (staging / "task_glm_recipe.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(staging, target)
        except OSError:  # a concurrent builder won
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the toy trainer (prompt-search benchmark)


def train_prompt_sensitive_glm(steps: int = 60, seed: int = 0, lr: float = 1e-2, batch_size: int = 32) -> Path:
    """tiny_glm trained on toy_sentiment train rows in one prompt format; cached; returns its folder.

    Each training sequence is 1-3 rows rendered with the ``default`` template and the gold label word, in
    the plain layout :func:`~autoglm_bench.prompts.prompt_text` produces for k-shot prompts; the loss is
    on the label words only, which is what makes a few hundred steps enough.

    >>> path = train_prompt_sensitive_glm()  # doctest: +SKIP
    >>> run = compose(["model=hf", f"model.path={path}"])  # doctest: +SKIP
    """
    from autoglm_bench.config import ModelConfig, compose
    from autoglm_bench.data.prepare import prepare
    from autoglm_bench.lm.tiny_glm import build_tiny_glm
    from autoglm_bench.paths import cache_dir

    source = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm", seed=seed))
    spec = [TRAIN_RECIPE, source.name, steps, seed, lr, batch_size]
    target = cache_dir() / "tiny_glm_toy_trained" / hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    if (target / "model.safetensors").is_file():
        return target
    run_cfg = compose(["task=toy_sentiment"])
    prep = prepare(run_cfg, data_dir=None, limit=None)
    # only the train part: the dev rows the search selects on stay unseen, as the test rows do
    cfg, rows = prep.task.cfg, prep.splits.train
    model, tokenizer = _load_float32(source)
    _train_loop(model, tokenizer, [(cfg, rows)], steps, seed, lr, batch_size, max_demos=2)
    save_model(model, tokenizer, target)
    return target


def _load_float32(folder: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of the tiny GLM in ``folder``, float32 weights for training."""
    from autoglm_bench.config import ModelConfig, PeftConfig
    from autoglm_bench.lm.adapters import load_for_training

    return load_for_training(ModelConfig(name="tiny_glm", kind="causal", path=str(folder)), PeftConfig())


# ---------------------------------------------------------------- the multi-task trainer


def train_task_glm(
    tasks: list[str] | tuple[str, ...] = ("sst2", "rte", "cb"),
    data_dir: str | Path | None = None,
    steps: int = 500,
    seed: int = 0,
    lr: float = 2e-3,
    batch_size: int = 32,
    max_demos: int = 3,
    max_tokens: int = 512,
    warmup_steps: int = 30,
    schedule: str = "cosine",
    task_weights: list[float] | None = None,
    tiny: dict[str, int] | None = None,
    split_seed: int = 0,
    dev_size: int = 200,
    threads: int = 1,
    log_every: int = 0,
) -> Path:
    """The tiny_glm architecture (``tiny`` settings, default :data:`TASK_GLM_TINY`) trained on the train
    part of ``tasks`` in each task's ``default`` template and label words; cached; returns its folder.

    ``split_seed`` and ``dev_size`` must be the values the evaluation runs use (the top-level config keys
    of the same names), so that the rows held out as dev here are the runs' dev rows. Each batch is one
    task's, drawn with ``task_weights`` (default: uniform). ``threads`` fixes
    torch's CPU thread count during training (the weights depend on it) and is part of the cache key.

    >>> path = train_task_glm(["sst2", "rte", "cb"], "../shared/data", task_weights=[4, 1, 1])  # doctest: +SKIP
    >>> # python -m autoglm_bench task=sst2 model=hf model.path=<path> data_dir=../shared/data
    """
    import huggingface_hub
    import torch
    import transformers

    from autoglm_bench.config import ConfigError, ModelConfig, TinyGlmConfig, compose, resolve_data_dir
    from autoglm_bench.data.prepare import prepare
    from autoglm_bench.lm.tiny_glm import build_tiny_glm
    from autoglm_bench.paths import cache_dir

    if not tasks:
        raise ConfigError("task-glm needs at least one task")
    if steps < 1 or batch_size < 1 or max_demos < 0 or lr <= 0 or threads < 1:
        raise ConfigError(
            f"task-glm needs steps >= 1, batch_size >= 1, max_demos >= 0, lr > 0, threads >= 1; got "
            f"{steps}, {batch_size}, {max_demos}, {lr}, {threads}"
        )
    weights = [float(w) for w in task_weights] if task_weights is not None else [1.0] * len(tasks)
    if len(weights) != len(tasks) or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(
            f"task-glm needs one non-negative weight per task ({len(tasks)}), not all zero; got {weights}"
        )
    arch = TinyGlmConfig(**{**TASK_GLM_TINY, **(tiny or {})})
    folder = resolve_data_dir(None if data_dir is None else str(data_dir))
    sources, data = [], []
    for name in tasks:
        run_cfg = compose([f"task={name}", f"split_seed={split_seed}", f"dev_size={dev_size}"])
        if "train" not in run_cfg.task.splits or run_cfg.task.type != "multiple_choice":
            raise ConfigError(
                f"task {name!r} has no train split (or is not multiple choice), so it cannot be "
                f"trained on; its dev rows come from its eval split, which must stay unseen"
            )
        # only the train part of the split protocol: the dev rows every selection reads and the test rows
        # (the eval split) stay unseen
        prepared = prepare(run_cfg, folder, limit=None)
        task, rows = prepared.task, prepared.splits.train
        if not rows:
            raise ConfigError(f"task {name!r}: no train rows left after the {dev_size} dev rows")
        sources.append((task.cfg, rows))
        digest = hashlib.sha256(json.dumps([r["_id"] for r in rows]).encode())
        digest.update(json.dumps(rows, sort_keys=True, default=str).encode())
        data.append(
            {
                "task": name,
                "train_rows": len(rows),
                "rows_sha256": digest.hexdigest()[:16],
                "template": task.cfg.templates["default"],
                "choices": list(task.cfg.choices or []),
            }
        )
    source = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm", seed=seed, tiny=arch))
    recipe = {
        "recipe": TASK_GLM_RECIPE,
        "base": source.name,
        "tiny": asdict(arch),
        "data": data,
        "steps": steps,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "max_demos": max_demos,
        "max_tokens": max_tokens,
        "warmup_steps": warmup_steps,
        "schedule": schedule,
        "task_weights": weights,
        "split_seed": split_seed,
        "dev_size": dev_size,
        "threads": threads,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "tiny_glm_task_trained" / key
    if (target / "model.safetensors").is_file():
        return target
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    model, tokenizer = _load_float32(source)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        losses = _train_loop(
            model,
            tokenizer,
            sources,
            steps,
            seed,
            lr,
            batch_size,
            max_demos,
            max_tokens,
            warmup_steps,
            schedule,
            weights,
            answer_logits_only=True,
            log_every=log_every,
        )
    finally:
        torch.set_num_threads(before)
    seconds = time.perf_counter() - start
    chunk = max(1, steps // 20)
    record = {
        **recipe,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "loss_curve": [
            [min(i + chunk, steps), round(sum(losses[i : i + chunk]) / len(losses[i : i + chunk]), 4)]
            for i in range(0, steps, chunk)
        ],
    }
    save_model(model, tokenizer, target, record)
    return target


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="sst2,rte,cb", help="comma-separated tasks with a train split")
    parser.add_argument(
        "--task-weights", default=None, help="comma-separated relative batch frequency per task (default: uniform)"
    )
    parser.add_argument("--data-dir", default=None, help="folder of <task>/<split>.jsonl (default: $AUTOGLM_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, no weight decay)")
    parser.add_argument("--warmup-steps", type=int, default=30, help="linear warmup before the cosine decay")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--max-demos", type=int, default=3, help="demos per sequence: 0 to this many")
    parser.add_argument("--max-tokens", type=int, default=512, help="longest training sequence in tokens")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data order")
    parser.add_argument("--split-seed", type=int, default=0, help="the runs' split_seed (which rows are dev)")
    parser.add_argument("--dev-size", type=int, default=200, help="the runs' dev_size (dev rows held out)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while training (part of the key)")
    for name, value in TASK_GLM_TINY.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value, help="architecture")
    parser.add_argument("--log-every", type=int, default=100, help="print the mean loss every N steps (stderr)")


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import ConfigError

    tiny = {name: getattr(args, name) for name in TASK_GLM_TINY}
    weights = [float(w) for w in args.task_weights.split(",")] if args.task_weights else None
    start = time.perf_counter()
    try:
        path = train_task_glm(
            [t.strip() for t in args.tasks.split(",") if t.strip()],
            args.data_dir,
            steps=args.steps,
            seed=args.seed,
            lr=args.lr,
            batch_size=args.batch_size,
            max_demos=args.max_demos,
            max_tokens=args.max_tokens,
            warmup_steps=args.warmup_steps,
            schedule=args.schedule,
            task_weights=weights,
            tiny=tiny,
            split_seed=args.split_seed,
            dev_size=args.dev_size,
            threads=args.threads,
            log_every=args.log_every,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    recipe = json.loads((path / "task_glm_recipe.json").read_text(encoding="utf-8"))
    cached = time.perf_counter() - start < recipe["train_seconds"]
    print(
        f"task-glm: {recipe['parameters']:,} parameters, {recipe['steps']} steps, trained in "
        f"{recipe['train_seconds']:.0f}s{' (cached)' if cached else ''}; loss {recipe['loss_curve'][0][1]:.3f} -> "
        f"{recipe['loss_curve'][-1][1]:.3f}",
        file=sys.stderr,
    )
    print(path)
