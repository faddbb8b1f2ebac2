"""The LightningModule of method=finetune: a Hugging Face model (plain or PEFT-wrapped), its loss, its
optimiser, and dev-set scoring with the task's metrics after each validation."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from ...config import ConfigError, OptimConfig
from ...metrics import compute_metrics
from .data import IGNORE

# what a batch hands the model: tokens, and for a vision-language model its images (train/vlm_data.py)
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens and how many there are.

    ``logits`` (B, K, V) are the model's outputs at the last K positions and ``labels`` (B, K) the token
    ids at those positions (IGNORE where no loss applies); position t predicts label t + 1.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    logprobs = -F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return logprobs.view_as(targets).sum(1), mask.sum(1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The built-in causal-LM loss: mean over rows of each row's mean cross-entropy on its answer tokens.

    Every example weighs the same whatever its answer's length (" positive" may be two tokens and
    " negative" three), which also makes the loss of N processes x B rows average to the loss of one
    process x N*B rows, so DDP reproduces single-process training.
    """
    total, count = answer_logprobs(logits, labels)
    return -(total / count.clamp(min=1)).mean()


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The built-in classification loss: cross-entropy of the head's logits against the gold class."""
    return F.cross_entropy(logits.float(), labels)


def import_loss(path: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Import ``package.module:function`` (a custom loss taking (logits, labels) as documented above)."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"method.loss {path!r} cannot be imported ({exc}); use 'package.module:function'") from exc
    if not callable(fn):
        raise ConfigError(f"method.loss {path!r} is not callable")
    return fn


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class FinetuneModule(pl.LightningModule):
    """Wraps ``model`` (a causal LM, or a sequence classifier when ``classifier``) for Lightning.

    Causal LMs are trained on the answer tokens only (the verbalised gold choice, or the generation
    target) and validated by scoring every choice of every dev example, as the core scorer does;
    classifiers by cross-entropy on the gold class. After each validation ``dev/<metric>`` is logged
    for every task metric (``dev/loss`` for generation tasks), for early stopping, checkpoints and pruning.
    """

    def __init__(
        self,
        model: Any,
        *,
        classifier: bool,
        optim: OptimConfig,
        metrics: list[str],
        choices: list[list[str]] | None = None,
        targets: list[int] | None = None,
        loss: str | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.model, self.classifier, self.optim, self.metrics = model, classifier, optim, metrics
        self.choices, self.targets = choices, targets  # dev examples' choices and gold indices
        self.loss_fn = import_loss(loss) if loss else (class_loss if classifier else answer_loss)
        self.compile, self.activation_checkpointing = compile, activation_checkpointing
        self.strict_loading = False  # PEFT checkpoints hold only the trainable weights (on_save_checkpoint)
        self._dev: list[tuple[torch.Tensor, ...]] = []

    def configure_model(self) -> None:
        if self.activation_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()  # a frozen embedding would otherwise cut the graph
        if self.compile and not isinstance(self.model, torch._dynamo.eval_frame.OptimizedModule):
            self.model = torch.compile(self.model)

    # ------------------------------------------------------------ steps

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels aligned with them). A causal LM projects only the last K positions, K covering
        every row's answer (``logits_to_keep``, computed by the collate function; default: all)."""
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        labels = batch["labels"]
        if self.classifier:
            return self.model(**inputs).logits, labels
        keep = min(int(batch.get("logits_to_keep", labels.shape[1])), labels.shape[1])
        logits = self.model(**inputs, logits_to_keep=keep).logits
        # prompt tuning prepends virtual tokens to the sequence; the last K positions are still ours
        return logits[:, -keep:], labels[:, -keep:]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, labels = self(batch)
        loss = self.loss_fn(logits, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, labels = self(batch)
        if self.classifier:
            self._dev.append((torch.log_softmax(logits.float(), -1),))
        elif "choice" in batch:
            total, _ = answer_logprobs(logits, labels)
            self._dev.append((batch["example"], batch["choice"], total))
        else:
            self._dev.append((self.loss_fn(logits, labels).reshape(1),))

    def on_validation_epoch_end(self) -> None:
        parts, self._dev = self._dev, []
        if not parts:
            return
        if self.classifier:
            scores = torch.cat([p[0] for p in parts]).tolist()
            predictions = [
                {"target": t, "scores": s, "choices": c}
                for t, s, c in zip(self.targets or [], scores, self.choices or [])
            ]
            names = [m for m in self.metrics if m != "acc_norm"]
        elif len(parts[0]) == 3:
            assert self.choices is not None and self.targets is not None
            scores = [[0.0] * len(c) for c in self.choices]
            for example, choice, total in parts:
                for i, j, v in zip(example.tolist(), choice.tolist(), total.tolist()):
                    scores[i][j] = v
            predictions = [
                {"target": t, "scores": s, "choices": c} for t, s, c in zip(self.targets, scores, self.choices)
            ]
            names = self.metrics
        else:
            self.log("dev/loss", torch.cat([p[0] for p in parts]).mean(), sync_dist=True)
            return
        for name, value in compute_metrics(names, predictions).items():
            self.log(f"dev/{name}", value, prog_bar=True, sync_dist=True)

    # ------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW without weight decay on biases and norm weights (any parameter with fewer than 2 dims,
        or a name containing "norm"), fused on CUDA; a warmup + linear/cosine/constant schedule per step."""
        from transformers import get_scheduler

        op = self.optim
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        fused = op.fused if op.fused is not None else self.device.type == "cuda"
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": op.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=op.lr,
            betas=tuple(op.betas),
            eps=op.eps,
            fused=fused,
        )
        total = int(self.trainer.estimated_stepping_batches)
        warmup = op.warmup_steps or int(op.warmup_ratio * total)
        name = {"constant": "constant_with_warmup"}.get(op.scheduler, op.scheduler)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Lightning refuses to clip for an optimiser that can unscale gradients itself (fused AdamW) under
        any mixed precision, bf16 included, where no gradient scaler exists and the gradients are already
        true: found on an H200 with ``trainer=gpu``. Without a scaler, clip them directly (what Lightning's
        plain precision does); with one (fp16), Lightning's own check stands."""
        if gradient_clip_val and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Under PEFT keep only the trainable weights: the frozen base is the model folder's."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        if len(trainable) < sum(1 for _ in self.parameters()):
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
