"""What a prompt search leaves in its run directory besides results.json: ``best_prompt.txt``,
``trials.csv``, Optuna plots as PNG, and a line per trial on stdout (and in W&B with ``logger=wandb``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ...config import RunConfig
from .space import Candidate

log = logging.getLogger(__name__)
PLOT_TITLES = {
    "optimization_history": "Optimization history",
    "param_importances": "Prompt parameter importances",
    "pareto_front": "Pareto front",
}


def plot_about(run: RunConfig, n_dev: int) -> str:
    """What a search's plots show, for their titles: task, model, the split the values come from, sampler.

    >>> from autoglm_bench.config import compose
    >>> plot_about(compose(["method=prompt_search", "search=tpe"]), 100)
    'toy_sentiment | tiny_glm | dev split (100 rows) | tpe sampler'
    """
    return f"{run.task.name} | {run.model.name} | dev split ({n_dev} rows) | {run.search.sampler} sampler"


def write_outputs(
    study: Any,
    run_dir: Path,
    best: Any,
    cand: Candidate,
    prompt: str,
    example: dict[str, Any],
    objectives: list[str],
    about: str,
) -> dict[str, Any]:
    """Write the best prompt, the trials CSV and the plots (titled with ``about``, see :func:`plot_about`);
    returns ``{"files": [...], "plots_skipped": {...}}``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    values = ", ".join(f"{name}={v:.4f}" for name, v in zip(objectives, best.values))
    choices = "\n".join(f"  [{i}] {c!r}" for i, c in enumerate(example["choices"]))
    (run_dir / "best_prompt.txt").write_text(
        f"# best trial {best.number}: dev {values}\n# parameters: {json.dumps(best.params, ensure_ascii=False)}\n"
        f"# instruction: {cand.instruction!r}\n# rendered on dev example {example['id']} (gold choice "
        f"{example['target']}):\n\n{prompt}\n\n# answer choices (scored as continuations):\n{choices}\n",
        encoding="utf-8",
    )
    study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration")).to_csv(
        run_dir / "trials.csv", index=False
    )
    files = ["best_prompt.txt", "trials.csv"]
    skipped = {}
    for name in PLOT_TITLES:
        if (name == "pareto_front") != (len(objectives) == 2):
            continue
        try:
            plot_png(study, name, run_dir / f"{name}.png", objectives, about)
            files.append(f"{name}.png")
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two complete trials that differ
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log.warning(f"plot {name} skipped: {exc}")
    return {"files": files, "plots_skipped": skipped}


def dev_label(objective: str) -> str:
    """An axis label for a search objective: the search only ever sees dev-split values."""
    return "mean prompt tokens (dev)" if objective == "prompt_tokens" else f"dev {objective}"


def plot_figure(study: Any, name: str, objectives: list[str], about: str) -> Any:
    """One of Optuna's matplotlib plots as a figure, titled with its name and ``about``, its axes named for
    what they show (``dev acc``, not ``Objective Value``)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    labels = [dev_label(o) for o in objectives]
    first: dict[str, Any] = {"target_name": labels[0]}
    if len(objectives) > 1:
        first["target"] = lambda t: t.values[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if name == "optimization_history":
            ax = vis.plot_optimization_history(study, **first)
            ax.set_xlabel("trial")
        elif name == "param_importances":
            ax = vis.plot_param_importances(study, **first)
            ax.set_xlabel(f"importance for {labels[0]}")
            ax.set_ylabel("prompt parameter")
        else:
            ax = vis.plot_pareto_front(study, target_names=labels)
    ax.set_title("")  # Optuna's own title, centred or on the left, gives way to ours
    ax.set_title(f"{PLOT_TITLES[name]}\n{about}", loc="left")
    return ax.figure


def plot_png(study: Any, name: str, path: Path, objectives: list[str], about: str) -> None:
    """Render :func:`plot_figure` to ``path``."""
    import matplotlib.pyplot as plt

    figure = plot_figure(study, name, objectives, about)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


class TrialLogger:
    """Optuna callback: one line per finished trial on stdout, and the trial's numbers in W&B when
    ``logger=wandb`` (a run named ``<run dir>-trials``, offline by default) or in TensorBoard when
    ``logger=tensorboard`` (``<run dir>/tensorboard/trials``, the trial number as the step)."""

    def __init__(self, run: RunConfig, run_dir: Path):
        self.metric = run.search.objectives[0]
        self.wandb_run = None
        self.tensorboard = None
        if run.logger.name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard" / "trials"))
        if run.logger.name == "wandb":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=run.logger.project,
                entity=run.logger.entity,
                mode=run.logger.mode,
                dir=str(run_dir),
                name=f"{run_dir.name}-trials",
                group=run_dir.name,
                tags=[*run.logger.tags, "prompt_search"],
                job_type="prompt_search",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def __call__(self, study: Any, trial: Any) -> None:
        attrs = trial.user_attrs
        value = attrs.get(f"dev_{self.metric}")
        shown = f"{value:.4f}" if value is not None else "-"
        if "duplicate_of" in attrs:
            cost = f"same prompts as trial {attrs['duplicate_of']}, not scored again"
        else:
            cost = f"scored {attrs.get('examples_scored', 0)}, cache hits {attrs.get('cache_hits', 0)}"
        log.info(
            f"trial {trial.number:>3} {trial.state.name.lower():<8} dev {self.metric}={shown} on "
            f"{attrs.get('dev_examples', 0)} examples ({cost}) {trial.params}"
        )
        numbers = {f"trial/{k}": v for k, v in attrs.items() if isinstance(v, (int, float)) and k != "duplicate_of"}
        if self.wandb_run is not None:
            self.wandb_run.log(
                {
                    "trial": trial.number,
                    "state": trial.state.name,
                    **numbers,
                    **{f"param/{k}": v for k, v in trial.params.items()},
                }
            )
        if self.tensorboard is not None:
            for name, number in numbers.items():
                self.tensorboard.add_scalar(name, number, trial.number)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
