"""Bad input of every kind: a non-zero exit, one line on stderr naming the problem, no results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
    ("wrong type", ["limit=many"], None, ["limit", "many"]),
    ("wrong type nested", ["prompt.k_shot=two"], None, ["k_shot", "two"]),
    ("negative limit", ["limit=-5"], None, ["limit", "-5"]),
    ("negative k_shot", ["prompt.k_shot=-1"], None, ["k_shot", "-1"]),
    ("chatglm3 without trust_remote_code", ["model=chatglm3_6b"], None, ["chatglm3_6b", "trust_remote_code"]),
    ("hf without path", ["model=hf"], None, ["model.path"]),
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
    ("unknown logger", ["logger.name=tensorboard"], None, ["tensorboard", "wandb"]),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", ["model.device=cuda"], None, ["cuda", "no CUDA device"]))


@pytest.mark.parametrize("overrides, files, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line(tmp_path, overrides, files, expected):
    args = [*overrides, f"hydra.run.dir={tmp_path / 'run'}"]
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
