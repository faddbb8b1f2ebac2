"""Our Lightning training step against Hugging Face Trainer on the same GLM-4-architecture model.

Both train the same randomly initialised Glm4ForCausalLM on the same random token batches (causal-LM
loss on every token, the same all-ones attention mask) with AdamW, in the same precision, compiled or not
alike (``--compile``: our torch.compile, the Trainer's ``torch_compile=True``), each in a fresh process
(so peak memory is each one's own). The table shows tokens/s over the timed steps (after warm-up steps,
which include compilation), MFU against the GPU's dense bf16 peak (matmul FLOPs only, from
:func:`autoglm_bench.methods.finetune.callbacks.training_flops`, the count fine-tuning runs record too; n/a on a
CPU, which has no meaningful datasheet peak), and peak memory (CUDA max allocated, or the process's max
RSS on a CPU). ``--preset glm4_1p5b`` is the issue's GPU configuration (1.47B parameters, seq 1024, micro-batch
8, bf16); the default on a CPU is ``tiny``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "glm4_1p5b": {
        "model": {
            "vocab_size": 151552,
            "hidden_size": 2048,
            "intermediate_size": 6912,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "head_dim": 128,
        },
        "seq": 1024,
        "batch": 8,
        "precision": "bf16",
    },
    "tiny": {
        "model": {
            "vocab_size": 8192,
            "hidden_size": 256,
            "intermediate_size": 864,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
        },
        "seq": 256,
        "batch": 4,
        "precision": "32",
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="model and batch shape (default: glm4_1p5b on a GPU, tiny on a CPU)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default 20 GPU, 8 CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model in both trainers (default: on a GPU)",
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    import torch

    gpu = torch.cuda.is_available()
    preset = args.preset or ("glm4_1p5b" if gpu else "tiny")
    spec = {
        **PRESETS[preset],
        "steps": args.steps or (20 if gpu else 8),
        "warmup": args.warmup,
        "compile": gpu if args.compile is None else args.compile,
        "seed": args.seed,
        "gpu": gpu,
    }
    ctx = multiprocessing.get_context("spawn")
    rows = {}
    for name in ("ours", "hf_trainer"):
        with ctx.Pool(1) as pool:
            rows[name] = pool.apply(measure, (name, spec))
    device = rows["ours"]["device"]
    n_params = rows["ours"]["params"]
    print(
        f"train benchmark: preset={preset} device={device} params={n_params / 1e6:.1f}M seq={spec['seq']} "
        f"micro_batch={spec['batch']} precision={spec['precision']} timed_steps={spec['steps']} "
        f"(after {spec['warmup']} warm-up) compile(both)={spec['compile']}"
    )
    print(f"{'trainer':<12}{'tokens/s':>12}{'MFU':>8}{'peak mem (MiB)':>16}{'mean loss':>12}")
    for name, r in rows.items():
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        print(f"{name:<12}{r['tokens_per_s']:>12.0f}{mfu:>8}{r['peak_mb']:>16.0f}{r['loss']:>12.4f}")
    speedup = rows["ours"]["tokens_per_s"] / rows["hf_trainer"]["tokens_per_s"]
    print(f"speed-up (tokens/s, ours / hf_trainer): {speedup:.2f}x")
    peak = "dense bf16 peak of this GPU" if rows["ours"]["mfu"] is not None else "n/a (no GPU peak to compare with)"
    print(f"peak memory: {rows['ours']['peak_kind']}; MFU: {peak}")


def build(spec: dict[str, Any]):
    """The random-init model and the random token batches (identical for both trainers)."""
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    torch.manual_seed(spec["seed"])
    config = Glm4Config(**spec["model"], max_position_embeddings=max(2048, spec["seq"]), pad_token_id=0)
    model = Glm4ForCausalLM(config)
    n = spec["batch"] * (spec["steps"] + spec["warmup"])
    ids = torch.randint(1, config.vocab_size, (n, spec["seq"]), generator=torch.Generator().manual_seed(spec["seed"]))
    return model, ids


def measure(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Train ``spec`` with one trainer ("ours" or "hf_trainer"); return its throughput and memory."""
    import torch

    from autoglm_bench.methods.finetune.callbacks import gpu_peak_flops, peak_memory_mb, training_flops

    device = torch.device("cuda" if spec["gpu"] else "cpu")
    model, ids = build(spec)
    n_params = sum(p.numel() for p in model.parameters())
    timer = {"start": 0.0, "end": 0.0, "loss": float("nan")}
    if name == "ours":
        _train_ours(model, ids, spec, timer)
    else:
        _train_hf(model, ids, spec, timer)
    seconds = timer["end"] - timer["start"]
    timed = [spec["seq"]] * (spec["steps"] * spec["batch"])  # real lengths of the timed sequences
    peak = gpu_peak_flops(device)
    return {
        "tokens_per_s": sum(timed) / seconds,
        "mfu": training_flops(model, timed) / seconds / peak if peak else None,
        "peak_mb": peak_memory_mb(device),
        "peak_kind": "CUDA max allocated" if spec["gpu"] else "CPU max RSS",
        "loss": timer["loss"],
        "params": n_params,
        "device": torch.cuda.get_device_name(device) if spec["gpu"] else "cpu",
    }


def _sync(spec: dict[str, Any]) -> None:
    import torch

    if spec["gpu"]:
        torch.cuda.synchronize()


def _train_ours(model: Any, ids: Any, spec: dict[str, Any], timer: dict[str, float]) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from autoglm_bench.config import OptimConfig
    from autoglm_bench.methods.finetune.module import FinetuneModule

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == spec["warmup"]:
                _sync(spec)
                timer["start"] = time.perf_counter()

        def on_train_end(self, trainer, module):
            _sync(spec)
            timer["end"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].detach())  # averaged at the end: no host sync per step

    def collate(rows):
        import torch

        batch = torch.stack(rows)
        return {"input_ids": batch, "attention_mask": torch.ones_like(batch), "labels": batch}

    module = FinetuneModule(
        model, classifier=False, optim=OptimConfig(lr=1e-4, weight_decay=0.01), metrics=["acc"], compile=spec["compile"]
    )
    trainer = pl.Trainer(
        accelerator="gpu" if spec["gpu"] else "cpu",
        devices=1,
        precision="bf16-mixed" if spec["precision"] == "bf16" else "32-true",
        max_steps=spec["steps"] + spec["warmup"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[Timer()],
    )
    losses: list[Any] = []
    trainer.fit(module, DataLoader(list(ids), batch_size=spec["batch"], collate_fn=collate))
    timer["loss"] = float(sum(losses) / len(losses))


def _train_hf(model: Any, ids: Any, spec: dict[str, Any], timer: dict[str, float]) -> None:
    import tempfile

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == spec["warmup"]:
                _sync(spec)
                timer["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            _sync(spec)
            timer["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timer["loss"] = float(logs["loss"])

    dataset = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=spec["batch"],
            max_steps=spec["steps"] + spec["warmup"],
            learning_rate=1e-4,
            weight_decay=0.01,
            bf16=spec["precision"] == "bf16",
            max_grad_norm=1.0,
            logging_steps=spec["steps"] + spec["warmup"],
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            optim="adamw_torch_fused" if spec["gpu"] else "adamw_torch",
            use_cpu=not spec["gpu"],
            torch_compile=spec["compile"],
        )
        Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Timer()]).train()
