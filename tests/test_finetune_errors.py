"""Bad fine-tuning inputs end in one line on stderr naming the bad value, exit status 2, no results.json."""

from __future__ import annotations

import pytest
import torch

from autoglm_bench.config import ConfigError, compose
from autoglm_bench.data.prepare import prepare
from autoglm_bench.methods.finetune.data import split_rows

from .conftest import run_cli

BASE = ["task=toy_sentiment", "model=tiny_glm", "method=finetune", "limit=16", "trainer.max_steps=1"]
CASES = {
    "unknown peft option": (["peft=adapterfusion"], ["peft", "adapterfusion", "lora"]),
    "unknown peft method": (["peft.method=ia3"], ["ia3", "full, lora, prefix, prompt_tuning"]),
    "missing LoRA target": (
        ["peft=lora", "peft.target_modules=[q_proj,query_key_value]"],
        ["query_key_value", "q_proj", "gate_up_proj"],
    ),
    "prefix on an encoder": (["model=minilm", "peft=prefix"], ["peft=prefix", "bert", "prompt_tuning"]),
    "batch size 0": (["method.batch_size=0"], ["batch_size", "0"]),
    "unknown precision": (["trainer.precision=bf17"], ["bf17", "bf16-mixed"]),
    "unknown scheduler": (["optim.scheduler=step"], ["step", "cosine"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_finetune_input_is_one_line(case, tmp_path):
    overrides, words = CASES[case]
    proc = run_cli(*BASE, *overrides, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_bf16_gpu_trainer_without_a_gpu_is_one_line(tmp_path):
    proc = run_cli(*BASE, "trainer=gpu", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bf16-mixed" in lines[0] and "GPU" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(
    torch.ops.mkldnn._is_mkldnn_bf16_supported() or torch.cuda.is_available(), reason="this CPU supports bfloat16"
)
def test_bf16_on_a_cpu_without_bf16_is_one_line(tmp_path):
    proc = run_cli(*BASE, "trainer.precision=bf16-mixed", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "bfloat16" in proc.stderr


@pytest.mark.parametrize("dev_size", [400, 10_000])
def test_a_dev_set_holding_out_every_training_row_is_one_line(dev_size):
    run = compose(["task=toy_sentiment", "method=finetune", f"dev_size={dev_size}"])
    message = f"dev_size={dev_size} leaves no training rows: the train split of 'toy_sentiment' has 400 rows"
    with pytest.raises(ConfigError, match=message + r" \(method=finetune needs dev_size < 400\)"):
        split_rows(prepare(run), run.method.train_size, run.limit, run.dev_size)
