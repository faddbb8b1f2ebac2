"""Data-parallel fine-tuning with 2 real CPU processes (Lightning DDP over gloo, launched by the CLI)
ends with the same weights as 1 process with the same global batch."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from autoglm_bench.config import ModelConfig
from autoglm_bench.lm.tiny_glm import build_tiny_glm

from .conftest import cli_ok, read_results

COMMON = [
    "task=toy_sentiment",
    "model=tiny_glm",
    "method=finetune",
    "peft=full",
    "optim.lr=3e-3",
    "limit=64",
    "dev_size=16",
    "trainer.max_steps=6",
    "trainer.max_epochs=5",
    "trainer.checkpoint=false",
    "logger=none",
]


def test_ddp_two_processes_match_one_process(tmp_path):
    cli_ok(
        *COMMON, "trainer=cpu", "method.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}", env={"OMP_NUM_THREADS": "1"}
    )
    cli_ok(
        *COMMON,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "method.batch_size=4",
        f"hydra.run.dir={tmp_path / 'two'}",
        env={"OMP_NUM_THREADS": "1"},
    )

    a = load_file(tmp_path / "one" / "model" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model" / "model.safetensors")
    initial = load_file(build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm")) / "model.safetensors")
    assert a.keys() == b.keys()
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training really changed the weights...
    # ...and both runs changed them the same way: the weights agree to ~1e-6. The tolerance leaves room for
    # the key biases, whose gradient is zero in exact arithmetic (softmax ignores a shift shared by all
    # keys), so Adam normalises float noise into updates of up to ~2e-5; a wrong batch split moves
    # weights by the learning rate (3e-3) instead.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=5e-5, msg=key)

    ra, rb = read_results(tmp_path / "one"), read_results(tmp_path / "two")
    assert ra["training"]["optimizer_steps"] == rb["training"]["optimizer_steps"] == 6
    assert [p["loss"] for p in rb["training"]["loss_curve"]][0] > 0
