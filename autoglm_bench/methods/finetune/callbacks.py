"""Training statistics for results.json: loss curve, dev curve, tokens/s, peak memory, MFU on GPU."""

from __future__ import annotations

import resource
import time
from typing import Any

import lightning.pytorch as pl
import torch

# Dense bf16 peak FLOP/s of common GPUs (vendor datasheets, without sparsity), matched by name.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "4090": 165e12,
}


def gpu_peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device``, or None for a CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)


def training_flops(model: torch.nn.Module, seq_lens: Any, head_lens: Any = None) -> float:
    """Matmul FLOPs of one training step (forward and backward) over sequences of ``seq_lens`` real tokens.

    Counted (2 FLOPs a multiply-add; no embedding lookup, norms or activations): every linear weight W
    applied to every real token, 6|W| if trained (forward 2, gradient of the input 2, of the weight 2)
    and 4|W| if frozen, as under PEFT (no weight gradient, but the gradient still flows through it). The
    output head (``get_output_embeddings``) counts only at the ``head_lens`` positions it projects (a
    causal LM trained with ``logits_to_keep``; default: every token). Attention: per layer and sequence
    of length L, QK^T and AV cost 2 * 2 * L^2 * heads * head_dim forward, three times that for training
    (no causal halving, as in the PaLM paper's appendix B). Under PEFT, a wrapped classifier head is counted
    once (its trained copy, not ``original_module``)."""
    lens = [int(n) for n in seq_lens]
    projected = lens if head_lens is None else [int(n) for n in head_lens]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    body = head = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "original_module" not in name.split("."):
            per_token = (6 if module.weight.requires_grad else 4) * module.weight.numel()
            if module is output:
                head += per_token
            else:
                body += per_token
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * sum(n * n for n in lens)
    return float(body * sum(lens) + head * sum(projected) + attention)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or on a CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class TrainStats(pl.Callback):
    """Collects the per-step training loss, the dev metrics of each validation, the tokens trained on
    (non-padding) and the training time without validation. Losses stay on the device until the end,
    so the hot loop adds no host synchronisation."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, torch.Tensor]] = []
        self.dev_curve: list[dict[str, float]] = []
        self.tokens: torch.Tensor | int = 0
        self.seq_lens: list[torch.Tensor] = []  # real tokens of each training sequence, for the FLOPs count
        self.head_lens: list[torch.Tensor] = []  # positions the output head projected in each
        self.seconds = 0.0
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append((trainer.global_step, outputs["loss"].detach()))
        lens = batch["attention_mask"].sum(-1)
        self.tokens = self.tokens + lens.sum()
        self.seq_lens.append(lens)
        keep = batch.get("logits_to_keep")
        self.head_lens.append(lens if keep is None else lens.clamp(max=int(keep)))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            dev = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("dev/")}
            self.dev_curve.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **dev})
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(pl_module)

    def _pause(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        if self._start:
            self.seconds += time.perf_counter() - self._start
            self._start = 0.0

    def summary(self, device: torch.device, model: torch.nn.Module) -> dict[str, Any]:
        """The numbers results.json records: loss curve (mean loss per optimiser step), dev curve,
        tokens/s, peak memory (MiB) and, on a known GPU, model FLOPs utilisation (:func:`training_flops`
        on the real lengths of the sequences trained on)."""
        per_step: dict[int, list[float]] = {}
        for step, loss in self.losses:
            per_step.setdefault(step, []).append(float(loss))
        tokens = int(self.tokens)
        tokens_per_s = tokens / self.seconds if self.seconds else 0.0
        peak = gpu_peak_flops(device)
        mfu = None
        if peak and self.seconds and self.seq_lens:
            lens, heads = torch.cat(self.seq_lens).tolist(), torch.cat(self.head_lens).tolist()
            mfu = training_flops(model, lens, heads) / self.seconds / peak
        return {
            "loss_curve": [{"step": s, "loss": sum(v) / len(v)} for s, v in sorted(per_step.items())],
            "dev_curve": self.dev_curve,
            "tokens_trained": tokens,
            "train_loop_s": self.seconds,
            "tokens_per_s": tokens_per_s,
            "peak_memory_mb": peak_memory_mb(device),
            "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss",
            "mfu": mfu,
        }
