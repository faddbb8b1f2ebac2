"""``method=prompt_search``: the Optuna study (sampler, pruner, storage, resume), its objective, and the
final scoring of the best prompt on the held-out test split.

A trial renders its candidate on the dev rows and scores them in growing minibatches (32, 64, 128, ...,
all of dev). After each minibatch it reports to the pruner: for ``wilcoxon`` every example's 0/1
score with the example's position as the step (the pruner pairs examples with the best trial's), for
``successive_halving``/``hyperband`` the running accuracy with the number of examples as the step.
A pruned trial stops there; only complete trials (scored on all of dev) can become the best. A trial
whose rendered dev prompts are exactly those of an earlier complete trial (``prompt_set``, a digest of
every request) is not scored: it takes that trial's values and intermediate reports, and records
``duplicate_of``.

Sampler, pruner, storage and the resume policy are the shared ones of :mod:`autoglm_bench.studies`:
an RDB URL (default ``sqlite:///<run_dir>/study.db``) with heartbeats; a trial whose process died goes
stale after ``2 * search.heartbeat_s`` seconds and is re-run once with its parameters, and a rerun of the
same command runs only the trials still missing up to ``search.n_trials`` finished ones. The search reads
only the dev rows of the split protocol (:mod:`autoglm_bench.data.splits`); the test rows are scored once, with
the best prompt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...config import CONF_DIR, ModelConfig, ProposalConfig, RunConfig, SearchConfig
from ...data.prepare import prepare
from ...data.splits import Splits
from ...lm import LM, load, open_cache
from ...studies import finished, make_pruner, make_sampler, open_study, run_objective, run_trials, safe_url, study_name
from ..evaluate import choice_predictions
from .evaluation import Evaluator, demo_pool, is_correct, minibatch_ends
from .proposal import instruction_history, meta_prompt, propose_instruction
from .space import PROPOSED, Candidate, PromptSpace, candidate_from_params

log = logging.getLogger(__name__)


def default_study_name(run: RunConfig, space: PromptSpace) -> str:
    """``<task>-<model>-<sampler>-<hash>``: the hash covers everything that changes what a trial computes
    (task, model, space, pruner, split and demo settings, seed), not n_trials or the storage, so the same
    command resumes and a changed space starts a new study next to the old one."""
    s = run.search
    keyed = {
        "task": asdict(run.task),
        "model": asdict(run.model),
        "space": space.fingerprint(),
        "seed": run.seed,
        "limit": run.limit,
        "system": run.prompt.system,
        "chat": run.prompt.chat_template,
        "split": [run.split_seed, run.dev_size],
        "search": {
            k: v for k, v in asdict(s).items() if k not in ("n_trials", "storage", "study_name", "heartbeat_s", "name")
        },
    }
    return study_name(f"{run.task.name}-{run.model.name}-{s.sampler}", keyed)


def open_search_study(run: RunConfig, space: PromptSpace, run_dir: Path, n_dev: int) -> Any:
    """Create the study, or load it when the storage already holds one of that name (resume)."""
    s = run.search
    url = s.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"
    sampler = make_sampler(
        s.sampler, run.seed, n_startup_trials=s.n_startup_trials, population_size=s.population_size, grid=space.grid()
    )
    pruner = make_pruner(s.pruner, min_resource=s.minibatch, max_resource=n_dev, p_threshold=s.p_threshold)
    directions = ["maximize"] + ["minimize"] * (len(s.objectives) - 1)
    return open_study(
        url,
        s.study_name or default_study_name(run, space),
        directions,
        sampler=sampler,
        pruner=pruner,
        heartbeat_s=s.heartbeat_s,
    )


class Objective:
    """One trial: pick a candidate, score dev minibatches through the cache, report, maybe prune."""

    def __init__(
        self, search: SearchConfig, space: PromptSpace, evaluator: Evaluator, splits: Splits, proposer: LM | None
    ):
        self.search, self.space, self.evaluator, self.splits, self.proposer = search, space, evaluator, splits, proposer
        self.ends = minibatch_ends(len(splits.dev), search.minibatch)
        self.metric = search.objectives[0]

    def candidate(self, trial: Any) -> Candidate:
        params = self.space.suggest(trial, static=self.search.sampler == "grid")
        text = trial.user_attrs.get("instruction") if params["instruction"] == PROPOSED else None
        if params["instruction"] == PROPOSED and text is None:
            prompt = meta_prompt(
                self.evaluator.task.name,
                instruction_history(trial.study.get_trials(deepcopy=False), self.search.proposal.history),
            )
            assert self.proposer is not None
            text = propose_instruction(self.proposer, prompt, self.search.proposal.max_new_tokens)
            trial.set_user_attr("meta_prompt", prompt)
        cand = candidate_from_params(params, text)
        trial.set_user_attr("instruction", cand.instruction)
        return cand

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        cand = self.candidate(trial)
        examples = self.evaluator.render(cand, self.splits.dev)
        key = self.evaluator.prompt_set_key(examples)
        trial.set_user_attr("prompt_set", key)
        earlier = same_prompt_set(trial, key)
        if earlier is not None:
            return reuse(trial, earlier)
        scored, hits = self.evaluator.scored, self.evaluator.hits
        correct: list[float] = []
        pruner = self.search.pruner
        for end in self.ends:
            batch = examples[len(correct) : end]
            new = [is_correct(self.metric, lls, ex) for lls, ex in zip(self.evaluator.score(batch), batch)]
            if pruner == "wilcoxon":
                for step, value in enumerate(new, start=len(correct)):
                    trial.report(value, step)
            correct += new
            accuracy = sum(correct) / len(correct)
            if len(self.search.objectives) == 1 and pruner != "wilcoxon":
                trial.report(accuracy, end)
            trial.set_user_attr("dev_examples", len(correct))
            trial.set_user_attr("dev_" + self.metric, accuracy)
            trial.set_user_attr("examples_scored", self.evaluator.scored - scored)
            trial.set_user_attr("cache_hits", self.evaluator.hits - hits)
            if end < len(examples) and pruner != "none" and trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric}={accuracy:.3f} after {end} of {len(examples)} dev examples")
        if len(self.search.objectives) == 2:
            tokens = self.evaluator.prompt_tokens(examples)
            trial.set_user_attr("prompt_tokens", tokens)
            return accuracy, tokens
        return accuracy


def same_prompt_set(trial: Any, key: str) -> Any:
    """The first complete trial of the study that scored the prompt set ``key``, or None."""
    import optuna

    complete = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in complete if t.user_attrs.get("prompt_set") == key), None)


def reuse(trial: Any, earlier: Any) -> float | tuple[float, ...]:
    """Give ``trial`` the results of ``earlier``, which scored the same prompts: its values, its reports
    (so pruners and plots see the same curve) and its dev attributes, with nothing scored."""
    for step, value in sorted(earlier.intermediate_values.items()):
        trial.report(value, step)
    for name, value in earlier.user_attrs.items():
        if name.startswith("dev_") or name == "prompt_tokens":
            trial.set_user_attr(name, value)
    trial.set_user_attr("examples_scored", 0)
    trial.set_user_attr("cache_hits", 0)
    trial.set_user_attr("duplicate_of", earlier.number)
    return earlier.values[0] if len(earlier.values) == 1 else tuple(earlier.values)


def best_trial(study: Any) -> Any:
    """The best complete trial; with two objectives, the most accurate of the Pareto front (then shortest)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
        why = f"; first failure: {failed[0].system_attrs.get('fail_reason', '?')}" if failed else ""
        raise RuntimeError(f"no trial of study {study.study_name!r} completed{why}")
    front = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    return max(front, key=lambda t: (t.values[0], -t.values[-1] if len(t.values) > 1 else 0.0))


def load_proposer(proposal: ProposalConfig, lm: LM) -> LM:
    """The model that proposes instructions: ``proposal.model`` (a conf/model option), or ``lm`` itself."""
    if proposal.model is None:
        return lm
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(CONF_DIR / "model" / f"{proposal.model}.yaml")
    )
    return load(OmegaConf.to_object(cfg))  # type: ignore[arg-type]


def run_prompt_search(run: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the study, then score the best prompt on dev and on the held-out test split.

    Returns the method's part of the result record (see :mod:`autoglm_bench.results`), with a
    ``search`` section: study, storage, trial counts, best parameters, split provenance, output files.
    """
    import optuna

    from ...lm.hf import minilm_embedder
    from ...prompts import chat_tokenizer
    from .outputs import TrialLogger, plot_about, write_outputs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    s = run.search
    prep = prepare(run)
    task, splits = prep.task, prep.splits
    space = PromptSpace.from_config(s.space, task.cfg)
    study = open_search_study(run, space, run_dir, len(splits.dev))
    cache = open_cache(run.method)  # method.cache=false: kept in memory, so a run still scores no request twice
    lm = load(run.model, cache=cache)
    chat_tokenizer(run.prompt, lm.tokenizer)  # fails early for a model without a chat template
    needs_embeddings = "nearest" in space.demo_selection and max(space.k_shot) > 0
    evaluator = Evaluator(
        task=task,
        lm=lm,
        base_prompt=run.prompt,
        verbalizers=space.verbalizers,
        pool=demo_pool(splits.train, s.demo_pool, run.seed),
        seed=run.seed,
        batch_size=run.method.batch_size,
        embed=minilm_embedder() if needs_embeddings else None,
    )
    proposer = load_proposer(run.search.proposal, lm) if PROPOSED in space.instructions else None
    load_s = time.perf_counter() - start

    if not study.get_trials(deepcopy=False):
        for params in s.enqueue:
            study.enqueue_trial(space.check(dict(params)))
    wanted = min(s.n_trials, space.size) if s.sampler == "grid" else s.n_trials
    finished_before = len(finished(study.get_trials(deepcopy=False)))
    logger = TrialLogger(run, run_dir)
    search_start = time.perf_counter()
    if wanted > finished_before:
        log.info(f"study {study.study_name}: {finished_before} of {wanted} trials finished; running the rest")
    objective = Objective(run.search, space, evaluator, splits, proposer)
    run_trials(study, wanted, lambda trials: [run_objective(objective, t) for t in trials], on_trial=logger)
    search_s = time.perf_counter() - search_start
    logger.close()

    best = best_trial(study)
    cand = candidate_from_params(best.params, best.user_attrs.get("instruction"))
    final: dict[str, Any] = {}
    for part, rows in (("dev", splits.dev), ("test", splits.test)):
        examples = evaluator.render(cand, rows)
        final[part] = choice_predictions(examples, evaluator.score(examples))
        context = evaluator.contexts(examples[:1])[0]
        final[part + "_prompt"] = getattr(context, "text", context)  # an image prompt (ImageText): its text
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    dev_metrics = task.hook.score(final["dev"])
    about = plot_about(run, len(splits.dev))
    files = write_outputs(study, run_dir, best, cand, final["dev_prompt"], final["dev"][0], s.objectives, about)
    return {
        "metrics": task.hook.score(final["test"]),
        "dev_metrics": dev_metrics,
        "objective": dev_metrics.get(s.objectives[0]),
        "predictions": final["test"],
        "dev_predictions": final["dev"],
        "splits": splits.record(),
        "timings": {
            "load_s": load_s,
            "search_s": search_s,
            "eval_s": evaluator.seconds,
            "train_s": None,
            "tokens_per_s": evaluator.tokens / evaluator.seconds if evaluator.seconds else 0.0,
        },
        "cost": {
            "examples_scored": evaluator.scored,
            "cache_hits": evaluator.hits,
            "examples_requested": evaluator.scored + evaluator.hits,
            "tokens_processed": evaluator.tokens,
            "study_examples_scored": sum(t.user_attrs.get("examples_scored", 0) for t in trials),
            **lm.usage(),
        },
        **{k: v for k, v in lm.describe().items() if k in ("device", "backend")},
        "prompt_example": final["dev_prompt"],
        "search": {
            "study_name": study.study_name,
            "storage": safe_url(s.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"),
            "sampler": s.sampler,
            "pruner": s.pruner,
            "objectives": list(s.objectives),
            "n_trials": wanted,
            "space_size": space.size,
            "trials": {
                "finished": len(finished(trials)),
                "complete": states.count("COMPLETE"),
                "pruned": states.count("PRUNED"),
                "duplicates": sum("duplicate_of" in t.user_attrs for t in trials),
                "failed": states.count("FAIL"),
                "finished_before_this_run": finished_before,
            },
            "best": {
                "trial": best.number,
                "values": list(best.values),
                "params": best.params,
                "candidate": asdict(cand),
            },
            "cache_path": None if cache.path == ":memory:" else cache.path,
            "demo_pool_size": len(evaluator.pool),
            "outputs": files,
        },
    }
