"""One fine-tuning run end to end: check the hardware, load task and model, train with Lightning, save
the weights, then score the eval split with the core scorer and the task's metrics."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from ...config import ConfigError, RunConfig, TrainerConfig, objective_of
from ...data.prepare import prepare
from ...data.tasks import Task
from ...lm import load
from ...lm.adapters import load_for_training
from ...lm.hf import resolve_device
from ...prompts import chat_tokenizer
from ..evaluate import choice_predictions, score_examples
from .callbacks import TrainStats
from .data import DataSpec, TaskDataModule, split_rows
from .module import FinetuneModule, trainable_parameters
from .vlm_data import VisionTaskDataModule


def check_hardware(tr: TrainerConfig) -> None:
    """Fail before any loading when the trainer asks for hardware or a precision this machine lacks."""
    cuda = torch.cuda.is_available()
    on_gpu = tr.accelerator in ("gpu", "cuda") or (tr.accelerator == "auto" and cuda)
    if on_gpu and not cuda:
        raise ConfigError(
            f"trainer.accelerator={tr.accelerator} with precision {tr.precision} needs a CUDA GPU and none is "
            "available; use trainer=cpu (precision 32-true)"
        )
    if tr.precision.startswith("bf16"):
        if on_gpu and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"trainer.precision={tr.precision} but this GPU has no bfloat16; use 16-mixed or 32-true")
        if not on_gpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ConfigError(f"trainer.precision={tr.precision} but this CPU has no bfloat16 support; use 32-true")
    if tr.precision == "16-mixed" and not on_gpu:
        raise ConfigError("trainer.precision=16-mixed needs a CUDA GPU; on a CPU use 32-true or bf16-mixed")
    if tr.devices > 1 and not on_gpu and tr.strategy == "auto":
        raise ConfigError(f"trainer.devices={tr.devices} on CPU needs a strategy; use trainer=ddp")


def monitor_of(run: RunConfig) -> tuple[str, str]:
    """The logged dev quantity to early-stop, checkpoint and prune on, and its Lightning mode: the run's
    objective (:func:`~autoglm_bench.config.objective_of`: the first task metric, or the dev loss)."""
    metric, direction = objective_of(run)
    return f"dev/{metric}", direction[:3]


def finetune(
    run: RunConfig, run_dir: Path, callbacks: list[pl.Callback] | None = None, evaluate: bool = True
) -> dict[str, Any]:
    """Train as ``run`` says, writing checkpoints and weights under ``run_dir``.

    Returns the method's part of the result record (metrics on the eval split, dev metrics, predictions,
    timings, cost, training statistics), or only the training part when ``evaluate`` is false. On a
    non-zero DDP rank it returns ``{"primary": False}`` right after training.
    """
    start = time.perf_counter()
    check_hardware(run.trainer)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banners about TPUs and tips
    pl.seed_everything(run.seed, workers=True, verbose=False)
    prepared = prepare(run)
    task = prepared.task
    classifier = run.model.kind == "encoder"
    n_choices = len(task.cfg.choices or [])
    model, tokenizer = load_for_training(run.model, run.peft, num_labels=n_choices if classifier else None)
    max_length = min(run.model.max_length, getattr(model.config, "max_position_embeddings", None) or 10**9)
    splits = split_rows(prepared, run.method.train_size, run.limit, run.dev_size)
    spec = DataSpec(task, splits, run.prompt, run.method, run.seed)
    if task.cfg.images:  # a vision-language model: ``tokenizer`` is its processor
        data: TaskDataModule = VisionTaskDataModule(spec, tokenizer, model, max_length)
    else:
        data = TaskDataModule(spec, tokenizer, max_length, classifier)
    data.setup()
    module = FinetuneModule(
        model,
        classifier=classifier,
        optim=run.optim,
        metrics=list(task.cfg.metrics),
        choices=[ex.choices for ex in data.dev_examples],
        targets=[ex.target for ex in data.dev_examples],
        loss=run.method.loss,
        compile=run.trainer.compile,
        activation_checkpointing=run.trainer.activation_checkpointing,
    )
    stats = TrainStats()
    trainer = build_trainer(
        run, run_dir, monitor_of(run), has_dev=bool(data.dev_rows), callbacks=[stats, *(callbacks or [])]
    )
    trainable, total = trainable_parameters(model)
    load_s = time.perf_counter() - start

    train_start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        # TaskDataModule restores the place in the epoch itself (see its state_dict)
        warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
        trainer.fit(module, datamodule=data, ckpt_path=run.trainer.resume_from, weights_only=True)
    train_s = time.perf_counter() - train_start
    if not trainer.is_global_zero:
        return {"primary": False}

    model = module.model
    device = resolve_device(run.model)
    training = {
        **stats.summary(trainer.strategy.root_device, model),
        "trainable_params": trainable,
        "total_params": total,
        "peft": run.peft.method,
        "train_rows": len(data.train_rows),
        "optimizer_steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "stopped_early": _stopped_early(trainer),
        "last_checkpoint": _last_checkpoint(trainer),
    }
    dev_metrics = stats.dev_curve[-1] if stats.dev_curve else {}
    dev_metrics = {k.removeprefix("dev/"): v for k, v in dev_metrics.items() if k.startswith("dev/")}
    objective = dev_metrics.get(monitor_of(run)[0].removeprefix("dev/"))  # what a sweeper optimises
    if run.method.save_model:
        training["saved_model"] = save_weights(
            model, tokenizer, run_dir / ("adapter" if run.peft.method not in ("full", "projector") else "model")
        )
    if not evaluate:
        return {
            "training": training,
            "dev_metrics": dev_metrics,
            "objective": objective,
            "splits": splits.record(),
            "timings": {"load_s": load_s, "train_s": train_s},
        }

    model = _unwrap(model).to(device).eval()
    chat = chat_tokenizer(run.prompt, data.tokenizer)  # a processor's own tokenizer for a vision-language model
    examples = data.render(splits.test, chat)[0]
    if classifier:
        predictions, eval_s, tokens = classify(
            model, tokenizer, task, examples, device, run.method.eval_batch_size, run.model.max_length
        )
        metrics = compute_head_metrics(task, predictions)
    else:
        if run.peft.method == "lora":
            model = model.merge_and_unload()  # a plain model again: the batched scorer's fast path applies
        method = run.method
        if run.peft.method in ("prefix", "prompt_tuning"):
            # Virtual tokens do not survive the batched scorer's KV-cache reuse; the naive one is exact.
            method = dataclasses.replace(method, scorer="naive")
        lm = load(run.model, trained=(model, tokenizer))
        with torch.inference_mode():
            predictions, score_stats, _ = score_examples(lm, task, examples, method, chat)
        metrics = task.hook.score(predictions)
        eval_s, tokens = score_stats.seconds, score_stats.tokens
    return {
        "metrics": metrics,
        "dev_metrics": dev_metrics,
        "objective": objective,
        "predictions": predictions,
        "splits": splits.record(),
        "training": training,
        "timings": {"load_s": load_s, "train_s": train_s, "eval_s": eval_s, "tokens_per_s": training["tokens_per_s"]},
        "cost": {
            "examples_scored": len(predictions),
            "tokens_processed": tokens,
            "tokens_trained": training["tokens_trained"],
        },
        "device": device,
    }


def build_trainer(
    run: RunConfig, run_dir: Path, monitor: tuple[str, str], has_dev: bool, callbacks: list[pl.Callback]
) -> pl.Trainer:
    """A Lightning Trainer from ``run.trainer``: checkpoints, early stopping, the configured callbacks
    (instantiated from their ``_target_``) and the run's logger (CSV, or W&B offline by default)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    tr = run.trainer
    key, mode = monitor
    callbacks = list(callbacks)
    if tr.checkpoint:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                monitor=key if has_dev else None,
                mode=mode,
                save_last=True,
                save_top_k=1 if has_dev else 0,
                every_n_train_steps=tr.checkpoint_every_n_steps,
                filename="best-{step}",
            )
        )
    if tr.early_stopping_patience is not None and has_dev:
        callbacks.append(EarlyStopping(monitor=key, mode=mode, patience=tr.early_stopping_patience))
    callbacks += [instantiate(c) for c in tr.callbacks]
    strategy: Any = tr.strategy
    if tr.strategy == "ddp" and tr.accelerator == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    return pl.Trainer(
        accelerator="gpu" if tr.accelerator == "cuda" else tr.accelerator,
        devices=tr.devices,
        num_nodes=tr.num_nodes,
        strategy=strategy,
        precision=tr.precision,
        max_epochs=tr.max_epochs,
        max_steps=tr.max_steps,
        accumulate_grad_batches=tr.accumulate_grad_batches,
        gradient_clip_val=tr.gradient_clip_val,
        val_check_interval=tr.val_every_n_steps,
        check_val_every_n_epoch=None if tr.val_every_n_steps else 1,
        limit_val_batches=None if has_dev else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=tr.log_every_n_steps,
        deterministic=tr.deterministic,
        enable_progress_bar=tr.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=tr.checkpoint,  # else Lightning adds its own checkpoint callback
        use_distributed_sampler=False,  # TaskDataModule shards its own order (see ShardedOrder)
        default_root_dir=str(run_dir),
        logger=lightning_logger(run, run_dir),
        callbacks=callbacks,
    )


def lightning_logger(run: RunConfig, run_dir: Path) -> Any:
    """Lightning's CSVLogger, TensorBoardLogger (``<run>/tensorboard/train``) or WandbLogger (offline unless
    logger.mode says otherwise), or none."""
    if run.logger.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="lightning_logs")
    if run.logger.name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        # no default hp_metric: it would log a placeholder -1 that no run measured
        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="train", default_hp_metric=False)
    if run.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project=run.logger.project,
            entity=run.logger.entity,
            tags=list(run.logger.tags),
            mode=run.logger.mode,
            save_dir=str(run_dir),
            name=f"{run_dir.name}-train",
        )
    return False


def save_weights(model: Any, tokenizer: Any, folder: Path) -> str:
    """The adapter (PEFT) or the whole model, as safetensors with its config and tokenizer."""
    _unwrap(model).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def classify(
    model: Any, tokenizer: Any, task: Task, examples: list[Any], device: torch.device, batch_size: int, max_length: int
) -> tuple[list[dict[str, Any]], float, int]:
    """Predictions of a classification head on rendered examples, ``batch_size`` at a time and truncated to
    ``max_length`` tokens: (predictions, seconds, tokens)."""
    from ...prompts import prompt_text

    start, tokens, scores = time.perf_counter(), 0, []
    contexts = [prompt_text(task.cfg, ex.messages) for ex in examples]
    with torch.inference_mode():
        for b in range(0, len(examples), batch_size):
            enc = tokenizer(
                contexts[b : b + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            scores += torch.log_softmax(model(**enc).logits.float(), -1).tolist()
            tokens += int(enc["attention_mask"].sum())
    return choice_predictions(examples, scores), time.perf_counter() - start, tokens


def compute_head_metrics(task: Task, predictions: list[dict[str, Any]]) -> dict[str, float]:
    """The task's metrics for a classification head. ``acc_norm`` divides a continuation's
    log-likelihood by its length, which has no meaning for a head's class scores, so it is left out."""
    from ...metrics import compute_metrics

    return compute_metrics([m for m in task.cfg.metrics if m != "acc_norm"], predictions)


def _unwrap(model: Any) -> Any:
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper


def _stopped_early(trainer: pl.Trainer) -> bool:
    stopper = trainer.early_stopping_callback
    return bool(stopper is not None and stopper.wait_count >= stopper.patience)


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    return getattr(ckpt, "last_model_path", None) or None
