"""Bad input of every kind: a non-zero exit, one line on stderr naming the problem, no results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoglm_bench.config import compose

from .conftest import run_cli


def _write_sst2(root: Path, validation: str, train: str | None = None) -> Path:
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "validation.jsonl").write_text(validation, encoding="utf-8")
    rows = [{"sentence": f"a fine film number {i}", "label": i % 2} for i in range(6)]
    (root / "sst2" / "train.jsonl").write_text(
        train if train is not None else "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return root


GOOD_ROWS = '{"sentence": "a good film", "label": 1}\n{"sentence": "a bad film", "label": 0}\n'

# (id, overrides, data files or None, words the one-line message must contain)
CASES = [
    ("unknown task", ["task=sst3"], None, ["unknown task 'sst3'", "sst2"]),
    ("unknown model", ["model=gpt9"], None, ["unknown model 'gpt9'", "tiny_glm"]),
    ("unknown key", ["prompt.kshot=3"], None, ["prompt.kshot", "k_shot"]),
    ("unknown top-level key", ["batchsize=3"], None, ["batchsize", "limit"]),
    ("unknown key added with +", ["+experiment=quickstart", "+limt=5"], None, ["'limt'", "did you mean 'limit'"]),
    ("unknown key added with ++", ["++prompt.kshot=3"], None, ["'prompt.kshot'", "did you mean 'k_shot'"]),
    ("unknown task key added with +", ["+task.metrix=[acc]"], None, ["'task.metrix'", "did you mean 'metrics'"]),
    ("unknown key in an experiment file", ["+experiment=typo"], None, ["'limt'", "did you mean 'limit'"]),
    ("unknown key in a task file", ["task=typo"], None, ["'task.metrix'", "did you mean 'metrics'"]),
    ("a base file as task", ["task=_bbh"], None, ["unknown task '_bbh'", "bbh_navigate"]),
    ("task file naming another task", ["task=renamed"], None, ["renamed.yaml", "'sst2_copy'", "name: renamed"]),
    ("task file without a name", ["task=nameless"], None, ["nameless.yaml", "name: nameless"]),
    ("wrong type", ["limit=many"], None, ["limit", "many"]),
    ("wrong type nested", ["prompt.k_shot=two"], None, ["k_shot", "two"]),
    ("negative limit", ["limit=-5"], None, ["limit", "-5"]),
    ("negative k_shot", ["prompt.k_shot=-1"], None, ["k_shot", "-1"]),
    ("chatglm3 without trust_remote_code", ["model=chatglm3_6b"], None, ["chatglm3_6b", "trust_remote_code"]),
    ("hf without path", ["model=hf"], None, ["model.path"]),
    ("missing local model folder", ["model=hf", "model.path=/no/such/dir"], None, ["'/no/such/dir'", "not exist"]),
    ("missing relative model folder", ["model=hf", "model.path=../no_such_model"], None, ["../no_such", "not exist"]),
    ("missing model folder under ~", ["model=hf", "model.path='~/no_such_model'"], None, ["~/no_such", "not exist"]),
    ("unknown dtype", ["model.dtype=fp4"], None, ["fp4", "bfloat16"]),
    ("unknown template", ["prompt.template=fancy"], None, ["fancy", "default"]),
    ("unknown experiment", ["+experiment=nope"], None, ["unknown experiment 'nope'", "quickstart"]),
    ("missing data file", ["task=rte"], {}, ["data file not found", "rte/validation.jsonl"]),
    (
        "malformed JSONL line",
        ["task=sst2"],
        {"validation": GOOD_ROWS + '{"sentence": "oops", label: 1}\n'},
        ["malformed JSON on line 3", "validation.jsonl"],
    ),
    ("empty split", ["task=sst2"], {"validation": "\n"}, ["empty", "validation.jsonl"]),
    (
        "template naming a missing field",
        ["task=sst2", 'task.templates.default="{{ sentense }}"'],
        {"validation": GOOD_ROWS},
        ["sentense", "sentence, label"],
    ),
    (
        "target outside the choices",
        ["task=sst2"],
        {"validation": '{"sentence": "x", "label": 7}\n'},
        ["target index 7", "2 choices"],
    ),
    ("k-shot without a train split", ["task=boolq", "prompt.k_shot=2"], None, ["k_shot=2", "train split"]),
    (
        "more shots than train rows",
        ["task=sst2", "prompt.k_shot=50"],
        {"validation": GOOD_ROWS},
        ["k_shot=50", "0 train rows"],
    ),
    ("unknown logger", ["logger.name=mlflow"], None, ["mlflow", "tensorboard"]),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", ["model.device=cuda"], None, ["cuda", "no CUDA device"]))


# Config files a user adds through Hydra's search path, each with a typo.
USER_CONF = {
    "experiment/typo.yaml": "# @package _global_\nlimt: 5\n",
    "task/typo.yaml": "defaults: [sst2, _self_]\nname: typo\nmetrix: [acc]\n",
    "task/renamed.yaml": "defaults: [sst2, _self_]\nname: sst2_copy\n",
    "task/nameless.yaml": "defaults: [_bbh, _self_]\nsource: {local: bbh/navigate.jsonl}\n",
}


@pytest.mark.parametrize("overrides, files, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line(tmp_path, overrides, files, expected):
    for name, text in USER_CONF.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text, encoding="utf-8")
    args = [*overrides, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    if files is not None:
        root = _write_sst2(tmp_path / "data", files.get("validation", GOOD_ROWS)) if files else tmp_path
        args.append(f"data_dir={root}")
    proc = run_cli(*args, env={"AUTOGLM_DATA_DIR": ""})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for word in expected:
        assert word in lines[0], lines[0]
    assert not list(tmp_path.rglob("results.json"))


def test_free_form_keys_may_still_be_added():
    """`+` stays open where the schema is a free mapping: hook options, extra label words, HPO spaces."""
    run = compose(
        [
            "+experiment=toy_tiny_glm_finetune_hpo",  # hpo.space: dotted config keys
            "+task.options.mode=strict",
            "+search.space.verbalizers.bad_good=[bad,good]",
            "tag=zero-shot",
        ]
    )
    assert run.task.options["mode"] == "strict" and run.search.space.verbalizers == {"bad_good": ["bad", "good"]}
    assert "optim.lr" in run.hpo.space and run.tag == "zero-shot"
