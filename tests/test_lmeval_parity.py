"""Parity with lm-evaluation-harness itself: the same tiny GLM folder, the same rows, lm-eval's OWN task
definitions (its YAML files, only the dataset location pointed at local JSONL) against our real
``run_evaluate``. Per example, the predictions must be identical and every choice's log-likelihood must
agree within 1e-4; generations must be the same text.

The rows are the first 3 to 60 of each file of the real offline data; both sides read the same truncated files, so the
few-shot pool (and with it lm-eval's per-document sampling) is the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lm_eval
import pytest

from autoglm_bench.config import ModelConfig, compose
from autoglm_bench.lm.tiny_glm import build_tiny_glm
from autoglm_bench.methods.evaluate import run_evaluate
from autoglm_bench.metrics import normalise_answer

from .conftest import openai_model

LMEVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"
MAX_LENGTH = 2048
BATCH = 8
# ours -> (lm-eval's task file, its task name, {its split: (our file under the data folder, rows kept)})
TASKS = {
    "sst2": ("glue/sst2/default.yaml", "sst2", {"validation": ("sst2/validation", 24), "train": ("sst2/train", 60)}),
    "rte": (
        "super_glue/rte/default.yaml",
        "sglue_rte",
        {"validation": ("rte/validation", 12), "train": ("rte/train", 20)},
    ),
    "copa": (
        "super_glue/copa/default.yaml",
        "copa",
        {"validation": ("copa/validation", 24), "train": ("copa/train", 20)},
    ),
    "cb": ("super_glue/cb/default.yaml", "cb", {"validation": ("cb/validation", 16), "train": ("cb/train", 20)}),
    "boolq": ("super_glue/boolq/default.yaml", "boolq", {"validation": ("boolq/validation", 8)}),
    "gsm8k": ("gsm8k/gsm8k.yaml", "gsm8k", {"test": ("gsm8k/test", 3), "train": ("gsm8k/train", 30)}),
    "bbh_navigate": ("bbh/zeroshot/navigate.yaml", "bbh_zeroshot_navigate", {"test": ("bbh/navigate", 3)}),
}


@pytest.fixture(scope="module")
def parity_data(data_dir, tmp_path_factory) -> Path:
    """The first rows of each task's files, in a temporary data folder both harnesses read."""
    root = tmp_path_factory.mktemp("parity_data")
    for _, _, files in TASKS.values():
        for file, n in files.values():
            (root / file).parent.mkdir(exist_ok=True)
            with (data_dir / f"{file}.jsonl").open(encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (root / f"{file}.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def task_manager(parity_data, tmp_path_factory):
    """lm-eval's TaskManager over task files that include lm-eval's own definitions and override only
    where the data comes from (and, for the ``_first_n`` variant, the sampler)."""
    from lm_eval.tasks import TaskManager

    folder = tmp_path_factory.mktemp("lmeval_tasks")
    for path, name, files in TASKS.values():
        common = {
            "include": str(LMEVAL_TASKS / path),
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {split: str(parity_data / f"{f}.jsonl") for split, (f, _) in files.items()}
            },
        }
        if "train" not in files:
            common["training_split"] = None  # the offline data has no train split for this task
        (folder / f"{name}.yaml").write_text(json.dumps({**common, "task": name}))
        first_n = {**common, "task": f"{name}_first_n", "fewshot_config": {"sampler": "first_n"}}
        (folder / f"{name}_first_n.yaml").write_text(json.dumps(first_n))
    return TaskManager(include_path=str(folder), include_defaults=False)


def lmeval_model(folder: Path):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folder), batch_size=BATCH, max_length=MAX_LENGTH, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def hflm(model_cache):
    """lm-eval's HF model on the tiny GLM folder our tiny_glm model config builds, loaded once."""
    return lmeval_model(build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm")))


@pytest.fixture(scope="module")
def glm4_style(glm4_style_folder):
    return lmeval_model(glm4_style_folder)


@pytest.fixture(scope="module")
def glm4_style_folder(model_cache, tmp_path_factory) -> Path:
    """The tiny GLM with a tokenizer that, like GLM-4's, adds ``[gMASK]<sop>`` in front of every text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    source = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    folder = tmp_path_factory.mktemp("glm4_style")
    for file in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(source / file, folder / file)
    tok = AutoTokenizer.from_pretrained(str(source))
    special = [(t, tok.convert_tokens_to_ids(t)) for t in ("[gMASK]", "<sop>")]
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B", special_tokens=special
    )
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(str(folder))("film")["input_ids"][:2] == [i for _, i in special]
    return folder


def lmeval_samples(hflm, task_manager, name: str, shots: int, filter_name: str = "none", **kwargs) -> list[dict]:
    """lm-eval's logged samples of one task under one of its filters, in document order."""
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=hflm,
        tasks=[name],
        task_manager=task_manager,
        num_fewshot=shots,
        log_samples=True,
        bootstrap_iters=0,
        **kwargs,
    )
    samples = [s for s in out["samples"][name] if s["filter"] == filter_name]
    return sorted(samples, key=lambda s: s["doc_id"])


def ours(task: str, data: Path, *overrides: str, model: tuple[str, ...] = ("model=tiny_glm",)) -> dict:
    """Our evaluation of the test rows, through the real method=evaluate code path."""
    run = compose([f"task={task}", *model, f"data_dir={data}", "dev_size=0", f"method.batch_size={BATCH}", *overrides])
    return run_evaluate(run, score_dev=False)


def assert_same_choices(ours_out: dict, samples: list[dict]) -> None:
    predictions = ours_out["predictions"]
    assert len(predictions) == len(samples) > 0
    gaps = []
    for p, s in zip(predictions, samples):
        theirs = [ll for ll, _ in s["filtered_resps"]]
        assert p["scores"] == pytest.approx(theirs, abs=1e-4), p["id"]
        assert p["prediction"] == max(range(len(theirs)), key=lambda j: (theirs[j], -j))
        gaps.append(max(theirs) - sorted(theirs)[-2])
    # the predictions mean something only if the choices are not tied: most gaps are far above 1e-4
    assert sum(g > 1e-2 for g in gaps) >= 0.8 * len(gaps)
    accuracy = sum(s["acc"] for s in samples) / len(samples)
    assert ours_out["metrics"]["acc"] == pytest.approx(accuracy)


@pytest.mark.parametrize("task", ["sst2", "rte", "copa", "cb", "boolq"])
def test_zero_shot_matches_lm_eval(task, parity_data, task_manager, hflm):
    samples = lmeval_samples(hflm, task_manager, TASKS[task][1], shots=0)
    out = ours(task, parity_data)
    assert_same_choices(out, samples)
    if "f1" in out["metrics"]:  # CB: lm-eval's own aggregation of its per-sample (gold, prediction) items
        import importlib.util

        import lm_eval

        path = Path(lm_eval.__file__).parent / "tasks" / "super_glue" / "cb" / "aggregate.py"
        spec = importlib.util.spec_from_file_location("cb_aggregate", path)
        aggregate = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(aggregate)
        assert out["metrics"]["f1"] == pytest.approx(aggregate.cb_multi_fi([s["f1"] for s in samples]))


@pytest.mark.parametrize("mode", ["first_n", "per_doc"])
def test_sst2_five_shot_matches_lm_eval(mode, parity_data, task_manager, hflm):
    name = "sst2_first_n" if mode == "first_n" else "sst2"
    samples = lmeval_samples(hflm, task_manager, name, shots=5)
    out = ours("sst2", parity_data, "prompt.k_shot=5", f"prompt.fewshot_mode={mode}")
    assert out["prompt_example"] == samples[0]["arguments"][0][0]
    assert_same_choices(out, samples)


def test_chat_template_prompt_matches_lm_eval(parity_data, task_manager, hflm):
    run = compose(["prompt=chat"])
    samples = lmeval_samples(
        hflm, task_manager, "sst2", shots=0, apply_chat_template=True, system_instruction=run.prompt.system
    )
    out = ours("sst2", parity_data, "prompt=chat")
    assert out["prompt_example"] == samples[0]["arguments"][0][0]
    assert_same_choices(out, samples)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_a_tokenizer_adding_special_tokens_matches_lm_eval(
    chat, glm4_style, glm4_style_folder, parity_data, task_manager
):
    # lm-eval encodes with the tokenizer's special tokens (a chat prompt, which does not start with the
    # tokenizer's BOS/EOS string, gets them too): so do we
    system = compose(["prompt=chat"]).prompt.system if chat else None
    samples = lmeval_samples(glm4_style, task_manager, "sst2", 0, apply_chat_template=chat, system_instruction=system)
    model = ("model=hf", f"model.path={glm4_style_folder}")
    assert_same_choices(ours("sst2", parity_data, *(["prompt=chat"] if chat else []), model=model), samples)


def test_truncated_contexts_match_lm_eval(parity_data, task_manager, hflm, monkeypatch):
    # 20 tokens: most COPA pairs are cut, the two choices of an example (of different lengths) differently
    monkeypatch.setattr(hflm, "_max_length", 20)
    samples = lmeval_samples(hflm, task_manager, "copa", shots=0)
    assert_same_choices(ours("copa", parity_data, "model.max_length=20"), samples)


@pytest.mark.parametrize(
    ("task", "filter_name", "shots"),
    [("gsm8k", "flexible-extract", 2), ("bbh_navigate", "strict-match", 0)],
)
def test_generation_matches_lm_eval(task, filter_name, shots, parity_data, task_manager, hflm):
    samples = lmeval_samples(hflm, task_manager, TASKS[task][1], shots=shots, filter_name=filter_name)
    out = ours(task, parity_data, f"prompt.k_shot={shots}", "prompt.fewshot_mode=per_doc")
    assert out["prompt_example"] == samples[0]["arguments"][0][0]
    assert [p["output"] for p in out["predictions"]] == [s["resps"][0][0] for s in samples]
    # the answer lm-eval's filter takes, normalised as its exact_match does, is ours
    task = compose([f"task={task}"]).task
    assert [p["prediction"] for p in out["predictions"]] == [
        normalise_answer(task, s["filtered_resps"][0]) for s in samples
    ]
    assert [float(p["prediction"] == p["target"]) for p in out["predictions"]] == [s["exact_match"] for s in samples]
    assert all(p["output"] for p in out["predictions"])


def test_a_changed_delimiter_breaks_parity(parity_data, task_manager, hflm):
    # the check above can fail: one character of layout away from lm-eval's definition, log-likelihoods move
    samples = lmeval_samples(hflm, task_manager, "sst2", shots=0)
    with pytest.raises(AssertionError):
        assert_same_choices(ours("sst2", parity_data, "task.target_delimiter='  '"), samples)


def test_lm_evals_local_completions_on_our_server_predicts_as_model_openai(served_tiny_glm, parity_data, task_manager):
    """lm-eval's own OpenAI-compatible client (``local-completions``: token-id prompts, echo, logprobs) against
    this project's server, next to ours through model=openai against the same server."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    folder = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    client = LocalCompletionsAPI(
        base_url=f"{served_tiny_glm}/completions",
        model="tiny_glm",
        tokenizer=str(folder),
        tokenizer_backend="huggingface",
        max_length=MAX_LENGTH,
    )
    remote = tuple(openai_model(served_tiny_glm))
    samples = lmeval_samples(client, task_manager, "sst2", 0, limit=12)
    assert_same_choices(ours("sst2", parity_data, "limit=12", model=remote), samples)
    samples = lmeval_samples(client, task_manager, "gsm8k", shots=2, filter_name="flexible-extract", limit=2)
    out = ours("gsm8k", parity_data, "limit=2", "prompt.k_shot=2", "prompt.fewshot_mode=per_doc", model=remote)
    assert [p["output"] for p in out["predictions"]] == [s["resps"][0][0] for s in samples]
    assert [float(p["prediction"] == p["target"]) for p in out["predictions"]] == [s["exact_match"] for s in samples]
