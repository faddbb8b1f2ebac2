"""method=evaluate: score the eval split with one fixed prompt and the task's metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import ConfigError, MethodConfig, RunConfig, objective_of
from ..data.prepare import prepare
from ..data.tasks import Task
from ..lm import LM, load, open_cache
from ..lm.hf import minilm_embedder
from ..metrics import choice_prediction, extract_answer
from ..prompts import Example, chat_tokenizer, choice_requests, example_inputs, needs_embedder
from ..scoring import ScoreStats


def run(run_cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """method=evaluate (:func:`run_evaluate`); dev rows are scored when ``method.score_dev``."""
    return run_evaluate(run_cfg, score_dev=bool(run_cfg.method.score_dev))


def run_evaluate(run: RunConfig, score_dev: bool = True) -> dict[str, Any]:
    """Load task, split it, render prompts (every template error surfaces here), load the model, score the
    test rows and, with ``score_dev``, the dev rows (whose metric is the objective a sweeper optimises).

    Returns the method's part of the result record: metrics (test), dev metrics, predictions, timings,
    cost, splits, device.
    """
    start = time.perf_counter()
    prep = prepare(run)
    task, splits = prep.task, prep.splits
    embed = minilm_embedder() if needs_embedder(run.prompt) else None
    examples = prep.examples("test", run.prompt, run.seed, embed)
    dev_examples = prep.examples("dev", run.prompt, run.seed, embed) if score_dev else []
    lm = load(run.model, backend=run.backend, ray=run.ray, cache=open_cache(run.method))
    try:
        chat = chat_tokenizer(run.prompt, lm.tokenizer)
        load_s = time.perf_counter() - start
        predictions, stats, contexts = score_examples(lm, task, examples, run.method, chat)
        dev_metrics: dict[str, float] = {}
        dev_predictions: list[dict[str, Any]] = []
        if dev_examples:
            dev_predictions, dev_stats, _ = score_examples(lm, task, dev_examples, run.method, chat)
            dev_metrics = task.hook.score(dev_predictions)
            stats = stats + dev_stats
    finally:
        lm.close()
    described = lm.describe()
    return {
        "metrics": task.hook.score(predictions),
        "dev_metrics": dev_metrics,
        "objective": dev_metrics.get(objective_of(run)[0]),
        "predictions": predictions,
        "dev_predictions": dev_predictions,
        "splits": splits.record(),
        "timings": {"load_s": load_s, "eval_s": stats.seconds, "train_s": None, "tokens_per_s": stats.tokens_per_s},
        "cost": {
            "examples_scored": stats.examples,
            "cache_hits": len(examples) + len(dev_examples) - stats.examples,
            "examples_requested": len(examples) + len(dev_examples),
            "tokens_processed": stats.tokens,
            **lm.usage(),
        },
        "device": described["device"],
        "backend": described["backend"],
        "prompt_example": getattr(contexts[0], "text", contexts[0]) if contexts else None,  # an image prompt: its text
    }


def score_examples(
    lm: LM, task: Task, examples: list[Example], method: MethodConfig, chat_tokenizer: Any = None
) -> tuple[list[dict[str, Any]], ScoreStats, list[str]]:
    """Score rendered examples with ``lm`` (behind the request cache when the caller wrapped it in one):
    (per-example predictions, cost of what was actually scored, model inputs).

    Multiple choice: log-likelihood of each choice after its context (``method.scorer``: batched or
    naive); generation: greedy generation, answer extracted as the task defines. ``chat_tokenizer``
    given: contexts go through its chat template. A chat-only server gets the messages themselves.
    """
    contexts = example_inputs(task.cfg, examples, chat_tokenizer)
    batch_size = method.batch_size
    if task.cfg.type == "multiple_choice":
        if lm.chat_only:
            raise ConfigError(
                f"task {task.cfg.name!r} is multiple choice, scored by log-likelihoods, which a chat-only server "
                "does not return"
            )
        requests = choice_requests(task.cfg, contexts, examples, chat=chat_tokenizer is not None)
        lls, stats = lm.loglikelihood(requests, batch_size=batch_size, scorer=method.scorer)
        predictions = choice_predictions(examples, lls)
    else:
        gen = task.cfg.generation
        inputs: list[Any] = [ex.messages for ex in examples] if lm.chat_only else contexts
        outputs, stats = lm.generate_until(inputs, gen.until, gen.max_new_tokens, batch_size=batch_size)
        predictions = [
            {"id": ex.id, "target": ex.target, "prediction": extract_answer(task.cfg, out), "output": out}
            for ex, out in zip(examples, outputs)
        ]
    return predictions, stats, contexts


def choice_predictions(examples: list[Example], lls: list[list[float]]) -> list[dict[str, Any]]:
    """Per-example multiple-choice prediction records, in the results.json layout."""
    return [
        {
            "id": ex.id,
            "target": ex.target,
            "prediction": choice_prediction("acc", scores, ex.choices),
            "scores": scores,
            "choices": ex.choices,
        }
        for ex, scores in zip(examples, lls)
    ]
