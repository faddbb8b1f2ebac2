"""``method=prompt_search``: the Optuna study (sampler, pruner, storage, resume), its objective, and the
final scoring of the best prompt on the held-out test split.

A trial renders its candidate on the dev rows and scores them in growing minibatches (32, 64, 128, ...,
all of dev). After each minibatch it reports to the pruner: for ``wilcoxon`` every example's 0/1
score with the example's position as the step (the pruner pairs examples with the best trial's), for
``successive_halving``/``hyperband`` the running accuracy with the number of examples as the step.
A pruned trial stops there; only complete trials (scored on all of dev) can become the best.

Storage is an RDB URL (default ``sqlite:///<run_dir>/study.db``) with heartbeats: a trial whose
process died (SIGKILL, preemption) goes stale after ``2 * search.heartbeat_s`` seconds, is marked
failed and re-queued with the same parameters, and a rerun of the same command runs only the trials
still missing up to ``search.n_trials`` finished ones.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import CONF_DIR, ConfigError, ModelConfig, RunConfig, SearchConfig, one_line, resolve_data_dir
from ..evaluate import choice_predictions
from ..models import LoadedModel, cache_dir, load_model
from ..tasks import load_task
from .cache import EvalCache
from .evaluation import Evaluator, Splits, is_correct, minibatch_ends, split_rows
from .proposal import instruction_history, meta_prompt, propose_instruction
from .space import PROPOSED, Candidate, PromptSpace, candidate_from_params

FINISHED = ("COMPLETE", "PRUNED")


def make_sampler(search: SearchConfig, space: PromptSpace, seed: int):
    """The Optuna sampler named by ``search.sampler``, seeded."""
    import optuna

    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.n_startup_trials, multivariate=True)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials,
                                         deterministic_objective=True)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=search.population_size)
    raise ConfigError(f"unknown search.sampler {search.sampler!r}")


def make_pruner(search: SearchConfig, n_dev: int):
    """The pruner named by ``search.pruner``; halving rungs sit on the minibatch ends (reduction factor 2)."""
    import optuna

    if search.pruner == "wilcoxon":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=search.p_threshold)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.minibatch, reduction_factor=2)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.minibatch, max_resource=n_dev, reduction_factor=2)
    return optuna.pruners.NopPruner()


def default_study_name(run: RunConfig, space: PromptSpace) -> str:
    """``<task>-<model>-<sampler>-<hash>``: the hash covers everything that changes what a trial computes
    (task, model, space, pruner, split and demo settings, seed), not n_trials or the storage, so the same
    command resumes and a changed space starts a new study next to the old one."""
    s = run.search
    keyed = {
        "task": asdict(run.task), "model": asdict(run.model), "space": space.fingerprint(), "seed": run.seed,
        "limit": run.limit, "system": run.prompt.system, "chat": run.prompt.chat_template,
        "search": {k: v for k, v in asdict(s).items()
                   if k not in ("n_trials", "storage", "study_name", "heartbeat_s", "cache_path", "name")},
    }
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{run.task.name}-{run.model.name}-{s.sampler}-{digest}"


def open_study(run: RunConfig, space: PromptSpace, run_dir: Path, n_dev: int):
    """Create the study, or load it when the storage already holds one of that name (resume)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    s = run.search
    url = s.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"
    directions = ["maximize"] + ["minimize"] * (len(s.objectives) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = RDBStorage(url, heartbeat_interval=s.heartbeat_s, grace_period=2 * s.heartbeat_s,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
            if url.startswith("sqlite"):
                tune_sqlite(storage.engine)
            return optuna.create_study(
                storage=storage, study_name=s.study_name or default_study_name(run, space), directions=directions,
                sampler=make_sampler(s, space, run.seed), pruner=make_pruner(s, n_dev), load_if_exists=True,
            )
        except Exception as exc:  # bad URL, missing driver, unreachable server, directions clash
            raise ConfigError(f"search.storage {safe_url(url)!r} cannot be opened: {one_line(exc)}") from exc


def tune_sqlite(engine: Any) -> None:
    """WAL journal and ``synchronous=NORMAL`` on every connection: Wilcoxon pruning reports one value per
    dev example, and a full fsync per report made storage writes ~6x slower than this. A killed process
    still loses nothing committed; only an OS crash or power loss could drop the last transactions."""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener existed get the pragmas when reopened


def safe_url(url: str) -> str:
    """The storage URL with any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a parseable URL: it holds no password we could mask
        return url


class Objective:
    """One trial: pick a candidate, score dev minibatches through the cache, report, maybe prune."""

    def __init__(self, run: RunConfig, space: PromptSpace, evaluator: Evaluator, splits: Splits,
                 proposer: LoadedModel | None):
        self.run, self.space, self.evaluator, self.splits, self.proposer = run, space, evaluator, splits, proposer
        self.ends = minibatch_ends(len(splits.dev), run.search.minibatch)
        self.metric = run.search.objectives[0]

    def candidate(self, trial: Any) -> Candidate:
        params = self.space.suggest(trial)
        text = trial.user_attrs.get("instruction") if params["instruction"] == PROPOSED else None
        if params["instruction"] == PROPOSED and text is None:
            prompt = meta_prompt(self.run.task.name, instruction_history(
                trial.study.get_trials(deepcopy=False), self.run.search.proposal.history))
            assert self.proposer is not None
            text = propose_instruction(self.proposer, prompt, self.run.search.proposal.max_new_tokens)
            trial.set_user_attr("meta_prompt", prompt)
        cand = candidate_from_params(params, text)
        trial.set_user_attr("instruction", cand.instruction)
        return cand

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        cand = self.candidate(trial)
        examples = self.evaluator.render(cand, self.splits.dev)
        scored, hits = self.evaluator.scored, self.evaluator.hits
        correct: list[float] = []
        pruner = self.run.search.pruner
        for end in self.ends:
            batch = examples[len(correct) : end]
            new = [is_correct(self.metric, lls, ex) for lls, ex in zip(self.evaluator.score(batch), batch)]
            if pruner == "wilcoxon":
                for step, value in enumerate(new, start=len(correct)):
                    trial.report(value, step)
            correct += new
            accuracy = sum(correct) / len(correct)
            if len(self.run.search.objectives) == 1 and pruner != "wilcoxon":
                trial.report(accuracy, end)
            trial.set_user_attr("dev_examples", len(correct))
            trial.set_user_attr("dev_" + self.metric, accuracy)
            trial.set_user_attr("examples_scored", self.evaluator.scored - scored)
            trial.set_user_attr("cache_hits", self.evaluator.hits - hits)
            if end < len(examples) and pruner != "none" and trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric}={accuracy:.3f} after {end} of {len(examples)} dev examples")
        if len(self.run.search.objectives) == 2:
            tokens = self.evaluator.prompt_tokens(examples)
            trial.set_user_attr("prompt_tokens", tokens)
            return accuracy, tokens
        return accuracy


def best_trial(study: Any) -> Any:
    """The best complete trial; with two objectives, the most accurate of the Pareto front (then shortest)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
        why = f"; first failure: {failed[0].system_attrs.get('fail_reason', '?')}" if failed else ""
        raise RuntimeError(f"no trial of study {study.study_name!r} completed{why}")
    front = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    return max(front, key=lambda t: (t.values[0], -t.values[-1] if len(t.values) > 1 else 0.0))


def load_proposer(run: RunConfig, lm: LoadedModel) -> LoadedModel:
    if run.search.proposal.model is None:
        return lm
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                          OmegaConf.load(CONF_DIR / "model" / f"{run.search.proposal.model}.yaml"))
    return load_model(OmegaConf.to_object(cfg))  # type: ignore[arg-type]


def run_prompt_search(run: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the study, then score the best prompt on dev and on the held-out test split.

    Returns the method's part of the result record (see :mod:`autoglm_bench.results`), with a
    ``search`` section: study, storage, trial counts, best parameters, split provenance, output files.
    """
    import optuna
    from optuna.trial import TrialState

    from ..prompts import chat_tokenizer, minilm_embedder
    from .outputs import TrialLogger, write_outputs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()
    s = run.search
    task = load_task(run.task, resolve_data_dir(run.data_dir), run.limit)
    splits = split_rows(task, s.test_fraction, s.demo_pool, run.seed)
    space = PromptSpace.from_config(s.space, task.cfg)
    study = open_study(run, space, run_dir, len(splits.dev))
    lm = load_model(run.model)
    chat_tokenizer(run.prompt, lm.tokenizer)  # fails early for a model without a chat template
    needs_embeddings = "nearest" in space.demo_selection and max(space.k_shot) > 0
    cache_path = s.cache_path or str(cache_dir() / "eval_cache.sqlite")
    evaluator = Evaluator(task=task, lm=lm, cache=EvalCache(cache_path), base_prompt=run.prompt,
                          verbalizers=space.verbalizers, pool=splits.pool, seed=run.seed,
                          batch_size=run.method.batch_size, embed=minilm_embedder() if needs_embeddings else None)
    proposer = load_proposer(run, lm) if PROPOSED in space.instructions else None
    load_s = time.perf_counter() - start

    if not study.get_trials(deepcopy=False):
        for params in s.enqueue:
            study.enqueue_trial(space.check(dict(params)))
    wanted = min(s.n_trials, space.size) if s.sampler == "grid" else s.n_trials
    finished_before = sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))
    logger = TrialLogger(run, run_dir)
    search_start = time.perf_counter()
    if wanted > finished_before:
        print(f"study {study.study_name}: {finished_before} of {wanted} trials finished; running the rest")
        # Several workers may share one storage: each stops once the study as a whole has enough.
        enough = optuna.study.MaxTrialsCallback(wanted, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(Objective(run, space, evaluator, splits, proposer), n_trials=wanted - finished_before,
                       catch=(Exception,), callbacks=[logger, enough], gc_after_trial=False)
    search_s = time.perf_counter() - search_start
    logger.close()

    best = best_trial(study)
    cand = candidate_from_params(best.params, best.user_attrs.get("instruction"))
    final: dict[str, Any] = {}
    for part, rows in (("dev", splits.dev), ("test", splits.test)):
        examples = evaluator.render(cand, rows)
        final[part] = choice_predictions(examples, evaluator.score(examples))
        final[part + "_prompt"] = evaluator.contexts(examples[:1])[0]
    metrics = {f"{part}_{k}": v for part in ("dev", "test") for k, v in task.hook.score(final[part]).items()}
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    files = write_outputs(study, run_dir, best, cand, final["dev_prompt"], final["dev"][0], s.objectives)
    return {
        "metrics": metrics,
        "predictions": [{**p, "split": "test"} for p in final["test"]],
        "timings": {"load_s": load_s, "search_s": search_s, "eval_s": evaluator.seconds, "train_s": None,
                    "tokens_per_s": evaluator.tokens / evaluator.seconds if evaluator.seconds else 0.0},
        "cost": {
            "examples_scored": evaluator.scored,
            "cache_hits": evaluator.hits,
            "examples_requested": evaluator.scored + evaluator.hits,
            "tokens_processed": evaluator.tokens,
            "study_examples_scored": sum(t.user_attrs.get("examples_scored", 0) for t in trials),
        },
        "device": lm.device,
        "prompt_example": final["dev_prompt"],
        "search": {
            "study_name": study.study_name,
            "storage": safe_url(s.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"),
            "sampler": s.sampler,
            "pruner": s.pruner,
            "objectives": list(s.objectives),
            "n_trials": wanted,
            "space_size": space.size,
            "trials": {"finished": sum(x in FINISHED for x in states), "complete": states.count("COMPLETE"),
                       "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
                       "finished_before_this_run": finished_before},
            "best": {"trial": best.number, "values": list(best.values), "params": best.params,
                     "candidate": asdict(cand)},
            "cache_path": cache_path,
            "splits": splits.record(),
            "outputs": files,
        },
    }
