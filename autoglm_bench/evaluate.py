"""method=evaluate: score the eval split with one fixed prompt and the task's metrics."""

from __future__ import annotations

import time
from typing import Any

from .config import MethodConfig, RunConfig, resolve_data_dir
from .models import LoadedModel, load_model
from .prompts import Example, chat_tokenizer, choice_requests, prompt_text, render_examples
from .scoring import ScoreStats, generate_until, loglikelihood, loglikelihood_naive
from .tasks import Task, choice_prediction, extract_answer, load_task


def run_evaluate(run: RunConfig) -> dict[str, Any]:
    """Load task, render prompts (every template error surfaces here), load the model, score.

    Returns the method's part of the result record: metrics, predictions, timings, cost, device.
    """
    start = time.perf_counter()
    task = load_task(run.task, resolve_data_dir(run.data_dir), run.limit)
    examples = render_examples(task, run.prompt, run.seed)
    lm = load_model(run.model)
    chat = chat_tokenizer(run.prompt, lm.tokenizer)
    load_s = time.perf_counter() - start

    predictions, stats, contexts = score_examples(lm, task, examples, run.method, chat)
    metrics = task.hook.score(predictions)
    return {
        "metrics": metrics,
        "predictions": predictions,
        "timings": {"load_s": load_s, "eval_s": stats.seconds, "train_s": None, "tokens_per_s": stats.tokens_per_s},
        "cost": {"examples_scored": stats.examples, "tokens_processed": stats.tokens},
        "device": lm.device,
        "prompt_example": contexts[0] if contexts else None,
    }


def score_examples(
    lm: LoadedModel, task: Task, examples: list[Example], method: MethodConfig, chat_tokenizer: Any = None
) -> tuple[list[dict[str, Any]], ScoreStats, list[str]]:
    """Score rendered examples with the core scorer: (per-example predictions, cost, model inputs).

    Multiple choice: log-likelihood of each choice after its context (``method.scorer``: batched or
    naive); generation: greedy generation, answer extracted as the task defines. ``chat_tokenizer``
    given: contexts go through its chat template.
    """
    contexts = [prompt_text(task.cfg, ex.messages, chat_tokenizer) for ex in examples]
    batch_size = method.batch_size
    if task.cfg.type == "multiple_choice":
        requests = choice_requests(task.cfg, contexts, examples, chat=chat_tokenizer is not None)
        if method.scorer == "naive":
            lls, stats = loglikelihood_naive(lm, requests)
        else:
            lls, stats = loglikelihood(lm, requests, batch_size=batch_size)
        predictions = choice_predictions(examples, lls)
    else:
        gen = task.cfg.generation
        outputs, stats = generate_until(lm, contexts, gen.until, gen.max_new_tokens, batch_size=batch_size)
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
