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


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12 * layers * hidden * seq for attention
    (the PaLM paper's appendix B estimate, counting the forward and backward passes)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


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
        self.tokens = self.tokens + batch["attention_mask"].sum()

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

    def summary(self, device: torch.device, model: torch.nn.Module, seq_len: int) -> dict[str, Any]:
        """The numbers results.json records: loss curve (mean loss per optimiser step), dev curve,
        tokens/s, peak memory (MiB) and, on a known GPU, model FLOPs utilisation."""
        per_step: dict[int, list[float]] = {}
        for step, loss in self.losses:
            per_step.setdefault(step, []).append(float(loss))
        tokens = int(self.tokens)
        tokens_per_s = tokens / self.seconds if self.seconds else 0.0
        peak = gpu_peak_flops(device)
        mfu = None
        if peak:
            cfg = getattr(model, "config", None)
            n_params = sum(p.numel() for p in model.parameters())
            fpt = flops_per_token(
                n_params, getattr(cfg, "num_hidden_layers", 0), getattr(cfg, "hidden_size", 0), seq_len
            )
            mfu = fpt * tokens_per_s / peak
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
