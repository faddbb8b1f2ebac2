"""method=evaluate: score the eval split with one fixed prompt and the task's metrics."""

from __future__ import annotations

import time
from typing import Any

from .cache import RequestCache, cached_generate_until, cached_loglikelihood, open_cache
from .config import MethodConfig, RunConfig, objective_of, resolve_data_dir
from .models import LoadedModel, load_model
from .prompts import Example, chat_tokenizer, choice_requests, prompt_text, render_examples
from .scoring import ScoreStats
from .splits import split_task
from .tasks import Task, choice_prediction, extract_answer, load_task


def run_evaluate(run: RunConfig, score_dev: bool = True) -> dict[str, Any]:
    """Load task, split it, render prompts (every template error surfaces here), load the model, score the
    test rows and, with ``score_dev``, the dev rows (whose metric is the objective a sweeper optimises).

    Returns the method's part of the result record: metrics (test), dev metrics, predictions, timings,
    cost, splits, device.
    """
    start = time.perf_counter()
    task = load_task(run.task, resolve_data_dir(run.data_dir))
    splits = split_task(task, run.split_seed, run.dev_size, run.limit)
    examples = render_examples(splits.view(task, splits.test), run.prompt, run.seed)
    dev_examples = render_examples(splits.view(task, splits.dev), run.prompt, run.seed) if score_dev else []
    cache = open_cache(run.method)
    if run.backend == "ray":  # Ray actors load the model; score_examples hands them the work
        from .distributed import RayWorkers

        lm = RayWorkers(run)
    else:
        lm = load_model(run.model)
    chat = chat_tokenizer(run.prompt, lm.tokenizer)
    load_s = time.perf_counter() - start

    predictions, stats, contexts = score_examples(lm, task, examples, run.method, chat, cache)
    dev_metrics: dict[str, float] = {}
    dev_predictions: list[dict[str, Any]] = []
    if dev_examples:
        dev_predictions, dev_stats, _ = score_examples(lm, task, dev_examples, run.method, chat, cache)
        dev_metrics = task.hook.score(dev_predictions)
        stats = stats + dev_stats
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
        },
        "device": lm.device,
        "prompt_example": contexts[0] if contexts else None,
    }


def score_examples(
    lm: LoadedModel,
    task: Task,
    examples: list[Example],
    method: MethodConfig,
    chat_tokenizer: Any = None,
    cache: RequestCache | None = None,
) -> tuple[list[dict[str, Any]], ScoreStats, list[str]]:
    """Score rendered examples with the core scorer through the request ``cache`` (None: nothing stored):
    (per-example predictions, cost of what was actually scored, model inputs).

    Multiple choice: log-likelihood of each choice after its context (``method.scorer``: batched or
    naive); generation: greedy generation, answer extracted as the task defines. ``chat_tokenizer``
    given: contexts go through its chat template.
    """
    if getattr(lm, "distributed", False):  # backend=ray: autoglm_bench/distributed.py
        return lm.score_examples(task, examples, method, chat_tokenizer)
    contexts = [prompt_text(task.cfg, ex.messages, chat_tokenizer) for ex in examples]
    batch_size = method.batch_size
    if task.cfg.type == "multiple_choice":
        requests = choice_requests(task.cfg, contexts, examples, chat=chat_tokenizer is not None)
        lls, stats = cached_loglikelihood(lm, requests, cache, batch_size, method.scorer)
        predictions = choice_predictions(examples, lls)
    else:
        gen = task.cfg.generation
        outputs, stats = cached_generate_until(lm, contexts, gen.until, gen.max_new_tokens, cache, batch_size)
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
