"""Prompt search: the real command on the real tiny model, real SQLite cache and real Optuna studies."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from autoglm_bench.config import ConfigError, compose
from autoglm_bench.lm import RequestCache
from autoglm_bench.methods.prompt_search.evaluation import minibatch_ends

from .conftest import cli_ok, read_results, run_cli, run_ok, start_cli


@pytest.fixture(autouse=True)
def one_thread_commands(monkeypatch):
    """Commands run on one torch thread: for a model this small, more threads only add synchronisation (and CI
    shares cores)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# A small space on the shipped toy task: 2 instructions+none x 2 templates x 2 shots x 2 selections.
SMALL = [
    "method=prompt_search",
    "search=tpe",
    "dev_size=100",
    "search.space.k_shot=[0,1]",
    "search.space.demo_selection=[random,balanced]",
    "search.space.demo_order=[selected]",
]


def test_tpe_is_the_default_sampler():
    """method=prompt_search needs no search= (conf/config.yaml picks search: tpe), as the README says."""
    run = compose(["method=prompt_search"])
    assert run.search.name == run.search.sampler == "tpe" and run.search.pruner == "wilcoxon"


def running_trials(db: Path) -> int:
    import sqlite3

    if not db.is_file():
        return 0
    with sqlite3.connect(db, timeout=10) as conn:
        try:
            return conn.execute(  # running and past choosing its prompt (user attribute "instruction" set)
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'instruction'"
            ).fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def finished_trials(run_dir: Path) -> list:
    import optuna

    record = read_results(run_dir)
    study = optuna.load_study(study_name=record["search"]["study_name"], storage=f"sqlite:///{run_dir}/study.db")
    return study.get_trials(deepcopy=False)


def test_minibatches_double_up_to_all_of_dev():
    assert minibatch_ends(300, 32) == [32, 64, 128, 256, 300]
    assert minibatch_ends(20, 32) == [20]


def test_cache_keys_cover_model_and_the_exact_request(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    request = ["loglikelihood", "batched", "Review: x\nSentiment:", [" negative", " positive"]]
    key = RequestCache.key("fp", request)
    others = [
        RequestCache.key("fp2", request),
        RequestCache.key("fp", ["loglikelihood", "naive", *request[2:]]),
        RequestCache.key("fp", [*request[:2], "Review: y\nSentiment:", request[3]]),
        RequestCache.key("fp", [*request[:3], [" bad", " good"]]),
        RequestCache.key("fp", ["generate_until", request[2], ["\n"], 8]),
        RequestCache.key("fp", ["generate_until", request[2], ["\n"], 9]),
    ]
    assert len({key, *others}) == 7
    cache.put([(key, "fp", [-1.5, -0.25])])
    cache.close()
    assert RequestCache(tmp_path / "c.sqlite").get([key, *others]) == {key: [-1.5, -0.25]}  # persisted, exact


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.space.k_shot=[]", "search.space.k_shot is an empty list"),
        ("search.space.instructions=[]", "search.space.instructions is an empty list"),
        ("search.sampler=annealing", "unknown search.sampler 'annealing'; allowed: tpe, random, grid, gp, nsga2"),
        ("search.pruner=annealing", "unknown search.pruner 'annealing'; allowed: none, median, wilcoxon"),
        ("search.n_trials=0", "search.n_trials must be a positive number of trials, got 0"),
        ("search.n_trials=-3", "search.n_trials must be a positive number of trials, got -3"),
        ("+search.space.verbalizers.x=[a,b,c]", "search.space.verbalizers.x has 3 label words"),
        ("search.space.templates=[nope]", "unknown template 'nope'"),
        ("search.enqueue=[{shots:2}]", "unknown parameter 'shots' in search.enqueue"),
        ("search.objectives=[acc,prompt_tokens]", "search.pruner=wilcoxon needs a single objective"),
    ],
)
def test_bad_search_config_is_one_line_error(override, message):
    with pytest.raises(ConfigError) as info:
        compose(["method=prompt_search", "search=tpe", override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_search_writes_outputs_and_second_run_is_all_cache_hits(tmp_path):
    args = [*SMALL, "search.n_trials=4", f"method.cache_path={tmp_path / 'cache.sqlite'}"]
    first = cli_ok(*args, f"hydra.run.dir={tmp_path / 'a'}")
    a = read_results(tmp_path / "a")
    for name in ("best_prompt.txt", "trials.csv", "optimization_history.png", "param_importances.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    assert len((tmp_path / "a" / "trials.csv").read_text().strip().splitlines()) == 1 + 4
    assert set(a["metrics"]) == set(a["dev_metrics"]) == {"acc", "acc_norm"}
    assert a["objective"] == a["dev_metrics"]["acc"]
    splits = a["splits"]  # dev: 100 rows of the train split; test: the whole eval split, never searched on
    assert len(splits["dev_ids"]) == 100 and len(splits["test_ids"]) == 200
    assert all(i.startswith("train-") for i in splits["dev_ids"])
    assert all(i.startswith("validation-") for i in splits["test_ids"])
    assert sorted(p["id"] for p in a["predictions"]) == sorted(splits["test_ids"])
    assert sorted(p["id"] for p in a["dev_predictions"]) == sorted(splits["dev_ids"])
    assert a["cost"]["examples_scored"] > 0 and a["search"]["trials"]["finished"] == 4
    assert a["prompt_example"] in (tmp_path / "a" / "best_prompt.txt").read_text()
    trial_lines = [line for line in first.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 4  # the terminal shows each trial, and so does the run's log file
    log = (tmp_path / "a" / "toy_sentiment.log").read_text()
    assert all(f"[autoglm_bench.methods.prompt_search.outputs][INFO] - {line}\n" in log for line in trial_lines), log

    b = run_ok(tmp_path / "b", *args)
    assert b["cost"]["examples_scored"] == 0
    assert b["cost"]["cache_hits"] == a["cost"]["examples_requested"] > 0
    assert b["metrics"] == a["metrics"] and b["search"]["best"] == a["search"]["best"]
    assert [p["scores"] for p in b["predictions"]] == [p["scores"] for p in a["predictions"]]


def test_bad_config_or_storage_on_rerun_loses_no_finished_trial(tmp_path):
    run_dir = tmp_path / "run"
    args = [*SMALL, "search.n_trials=2", "search.space.k_shot=[0]", f"hydra.run.dir={run_dir}"]
    cli_ok(*args)
    before = [(t.number, t.values) for t in finished_trials(run_dir)]
    for bad in (
        "search.pruner=annealing",
        "search.space.templates=[]",
        "search.n_trials=0",
        f"search.storage=sqlite:///{tmp_path}/missing/dir/study.db",
    ):
        proc = run_cli(*args, bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "cannot open study" in proc.stderr
    assert [(t.number, t.values) for t in finished_trials(run_dir)] == before and len(before) == 2


def test_sigkill_mid_search_then_rerun_finishes_exactly_n_trials(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *SMALL,
        "search.n_trials=6",
        "search.heartbeat_s=1",
        "search.pruner=none",
        f"method.cache_path={tmp_path / 'cache.sqlite'}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = start_cli(
        *args,
        env={"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    done = 0
    for line in proc.stdout:  # wait for two finished trials ...
        done += line.startswith("trial ")
        if done == 2:
            break
    deadline = time.monotonic() + 60
    while not running_trials(run_dir / "study.db") and time.monotonic() < deadline:
        time.sleep(0.01)  # ... then kill the process while its third trial is running
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    import optuna

    storage = f"sqlite:///{run_dir}/study.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    killed = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    kept = {t.number: (t.values, t.datetime_complete) for t in killed if t.state.name == "COMPLETE"}
    assert len(kept) == 2
    time.sleep(2.5)  # past the heartbeat grace period (2 x heartbeat_s), as any real rerun would be

    cli_ok(*args)
    trials = finished_trials(run_dir)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    assert {t.number: (t.values, t.datetime_complete) for t in finished if t.number in kept} == kept
    (interrupted,) = [t for t in trials if t.state.name == "FAIL"]
    assert interrupted.number == 2 and len(trials) == 7
    # the killed trial is retried once with its parameters: not lost, and nothing finished ran twice
    (retry,) = [r for r in finished if r.system_attrs.get("failed_trial") == interrupted.number]
    assert retry.params == interrupted.params
    assert read_results(run_dir)["search"]["trials"]["finished_before_this_run"] == 2


@pytest.fixture(scope="module")
def trained_model() -> Path:
    """tiny_glm trained briefly on the toy task: accurate with its label words, inverted with them swapped."""
    import torch

    from autoglm_bench.bench.search import train_prompt_sensitive_glm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_prompt_sensitive_glm()
    finally:
        torch.set_num_threads(threads)


def test_wilcoxon_prunes_swapped_label_words_before_the_whole_dev_split(tmp_path, trained_model):
    run_dir = tmp_path / "run"
    cli_ok(
        "method=prompt_search",
        "search=tpe",
        "dev_size=100",
        "model=hf",
        f"model.path={trained_model}",
        "search.n_trials=2",
        "search.pruner=wilcoxon",
        "search.space.instructions=[none]",
        "search.space.templates=[default]",
        "search.space.k_shot=[0]",
        "+search.space.verbalizers.task=[negative,positive]",
        "+search.space.verbalizers.swapped=[positive,negative]",
        "search.enqueue=[{verbalizer:task},{verbalizer:swapped}]",
        f"hydra.run.dir={run_dir}",
    )
    good, bad = finished_trials(run_dir)
    assert good.params["verbalizer"] == "task" and good.state.name == "COMPLETE" and good.value > 0.7
    assert good.user_attrs["dev_examples"] == 100
    assert bad.params["verbalizer"] == "swapped" and bad.state.name == "PRUNED"
    assert bad.user_attrs["dev_examples"] == 32 and bad.user_attrs["dev_acc"] < 0.5  # below chance
    assert read_results(run_dir)["search"]["best"]["params"]["verbalizer"] == "task"


def test_nsga2_two_objectives_and_grid_is_exhaustive(tmp_path):
    cli_ok(
        *SMALL, "search=nsga2", "search.n_trials=3", "search.space.k_shot=[0,1]", f"hydra.run.dir={tmp_path / 'nsga'}"
    )
    assert (tmp_path / "nsga" / "pareto_front.png").stat().st_size > 0
    assert all(
        len(t.values) == 2 and t.values[1] == t.user_attrs["prompt_tokens"] > 0
        for t in finished_trials(tmp_path / "nsga")
    )
    cli_ok(
        *SMALL,
        "search=grid",
        "search.space.instructions=[none]",
        "search.space.k_shot=[0]",
        "search.space.demo_selection=[random]",
        f"hydra.run.dir={tmp_path / 'grid'}",
    )
    assert sorted(t.params["template"] for t in finished_trials(tmp_path / "grid")) == ["default", "question"]


def test_proposed_instructions_see_earlier_scores(tmp_path, tiny_lm):
    from autoglm_bench.methods.prompt_search.proposal import propose_instruction

    run_dir = tmp_path / "run"
    cli_ok(
        *SMALL,
        "search=random",
        "search.n_trials=3",
        "search.space.k_shot=[0]",
        "search.space.instructions=[Rate the review.,proposed]",
        "search.proposal.max_new_tokens=12",
        "search.enqueue=[{instruction:Rate the review.},{instruction:proposed},{instruction:proposed}]",
        f"hydra.run.dir={run_dir}",
    )
    first, *proposed = finished_trials(run_dir)
    shown = f"Instruction: Rate the review.\nAccuracy: {100 * first.value:.1f}%"
    for trial in proposed:
        assert shown in trial.user_attrs["meta_prompt"]
        # the trial's instruction is what the model wrote for that meta-prompt (greedy, so reproducible)
        assert trial.user_attrs["instruction"] == propose_instruction(tiny_lm, trial.user_attrs["meta_prompt"], 12)
    if proposed[0].user_attrs["instruction"]:
        assert f"Instruction: {proposed[0].user_attrs['instruction']}\n" in proposed[1].user_attrs["meta_prompt"]


def test_nearest_demos_pick_the_most_similar_rows():
    from autoglm_bench.config import PromptConfig
    from autoglm_bench.data.tasks import load_task
    from autoglm_bench.lm.hf import minilm_embedder
    from autoglm_bench.prompts import nearest_demos

    task = load_task(compose(["task=toy_sentiment"]).task, None, limit=5)
    task.rows["train"] = task.rows["train"][:50] + task.rows["eval"][:2]  # the queries themselves are in the pool
    prompt = PromptConfig(k_shot=3, demo_selection="nearest")
    demos = nearest_demos(task, prompt, minilm_embedder(), task.rows["eval"][:2])
    assert [d[0]["_id"] for d in demos] == [r["_id"] for r in task.rows["eval"][:2]]
    assert all(len(d) == 3 for d in demos)


@pytest.mark.parametrize(("sampler", "pruner"), [("gp", "successive_halving"), ("random", "hyperband")])
def test_halving_pruners_see_running_accuracy_at_minibatch_ends(tmp_path, sampler, pruner):
    run_dir = tmp_path / "run"
    cli_ok(
        *SMALL,
        f"search={sampler}",
        f"search.pruner={pruner}",
        "search.n_trials=3",
        "search.space.demo_selection=[random]",
        f"hydra.run.dir={run_dir}",
    )
    trials = finished_trials(run_dir)
    assert len(trials) == 3 and read_results(run_dir)["search"]["sampler"] == sampler
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == ([32, 64, 100] if t.state.name == "COMPLETE" else [32, 64, 100][: len(steps)])
        assert t.intermediate_values[steps[-1]] == t.user_attrs["dev_acc"]


def test_space_dimensions_take_the_sweep_syntax_of_every_search_space():
    space = compose(
        [
            "method=prompt_search",
            'search.space.k_shot="range(0,3)"',
            'search.space.templates="choice(default,question)"',
        ]
    ).search.space
    assert space.k_shot == [0, 1, 2] and space.templates == ["default", "question"]
    with pytest.raises(ConfigError, match="prompt dimensions are categorical"):
        compose(["method=prompt_search", 'search.space.k_shot="interval(0,3)"'])


def test_demo_settings_are_asked_only_when_they_matter_and_no_prompt_set_is_scored_twice(tmp_path):
    """k_shot=0 has no demos to select or order and one demo has no order, so those trials do not ask for
    them; a trial whose rendered prompts equal an earlier trial's takes that trial's value, scoring nothing."""
    run_dir = tmp_path / "run"
    proc = cli_ok(
        "method=prompt_search",
        "search=tpe",
        "dev_size=100",
        "search.space.instructions=[none]",
        "search.space.templates=[default]",
        "search.space.k_shot=[0,1]",
        "search.space.demo_selection=[random,balanced]",
        "search.space.demo_order=[selected,reversed]",
        "search.n_trials=10",
        "search.pruner=none",
        f"hydra.run.dir={run_dir}",
    )
    trials = finished_trials(run_dir)
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    first_of: dict[tuple, object] = {}  # the prompt a trial renders: k, and the demo settings that apply
    for t in trials:
        k = t.params["k_shot"]
        demo_settings = ["demo_selection", "demo_order"][: min(k, 2)]
        assert set(t.params) == {"instruction", "template", "verbalizer", "k_shot", *demo_settings}, t.params
        prompt = (k, t.params.get("demo_selection") if k > 0 else None)
        first = first_of.setdefault(prompt, t)
        attrs = t.user_attrs
        if first is t:
            assert "duplicate_of" not in attrs and attrs["examples_scored"] + attrs["cache_hits"] == 100, attrs
        else:
            assert attrs["duplicate_of"] == first.number and t.values == first.values
            assert attrs["examples_scored"] == attrs["cache_hits"] == 0 and attrs["dev_examples"] == 100
    record = read_results(run_dir)
    assert record["search"]["trials"]["duplicates"] == 10 - len(first_of) > 0
    test_n, scored = len(record["splits"]["test_ids"]), record["cost"]["examples_scored"]
    assert f"| prompt_search | test n={test_n} | scored {scored} | acc=" in proc.stdout, proc.stdout[-2000:]


def test_search_plots_name_task_model_split_sampler_and_dev_axes():
    """The figures as drawn (before saving): titled with what was searched, axes saying they show dev values."""
    import optuna

    from autoglm_bench.data.tasks import load_task
    from autoglm_bench.methods.prompt_search.outputs import plot_about, plot_figure
    from autoglm_bench.methods.prompt_search.space import PromptSpace

    run = compose(["method=prompt_search", "search=nsga2", "search.space.k_shot=[0,1,2]"])
    space = PromptSpace.from_config(run.search.space, load_task(run.task, None).cfg)
    about = plot_about(run, 100)
    single, double = optuna.create_study(direction="maximize"), optuna.create_study(directions=["maximize", "minimize"])
    for i in range(6):  # real trials of the real space, with made-up dev values
        for study, values in ((single, [i / 10]), (double, [i / 10, 50.0 - i])):
            trial = study.ask()
            space.suggest(trial)
            study.tell(trial, values)
    figures = {
        name: plot_figure(study, name, objectives, about)
        for name, study, objectives in (
            ("optimization_history", single, ["acc"]),
            ("param_importances", single, ["acc"]),
            ("pareto_front", double, ["acc", "prompt_tokens"]),
        )
    }
    for name, figure in figures.items():
        ax = figure.axes[0]
        title = " ".join(ax.get_title(loc) for loc in ("left", "center", "right"))
        for part in ("toy_sentiment", "tiny_glm", "dev split (100 rows)", "nsga2 sampler"):
            assert part in title, (name, title)
    history, importances, pareto = (
        figures[n].axes[0] for n in ("optimization_history", "param_importances", "pareto_front")
    )
    assert history.get_ylabel() == "dev acc" and history.get_xlabel() == "trial"
    assert importances.get_xlabel() == "importance for dev acc"
    assert (pareto.get_xlabel(), pareto.get_ylabel()) == ("dev acc", "mean prompt tokens (dev)")
