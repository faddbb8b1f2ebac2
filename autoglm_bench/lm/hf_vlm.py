"""The ``hf`` backend for vision-language models: an ``AutoModelForImageTextToText`` and its processor in
this process (``model.kind``: ``tiny_glm4v``, ``hf_vlm``, ``glm4v``).

A context is a string or an :class:`~autoglm_bench.data.images.ImageText`, whose ``<image>`` markers become
the model's image placeholder (GLM-4V: ``<|begin_of_image|><|image|><|end_of_image|>``, as its chat template
writes an image part; elsewhere the processor's image token, as lm-evaluation-harness's ``hf-multimodal``
writes it) and whose images go through the model's own processor. Log-likelihoods are computed one example
at a time, its choices batched over the context's KV cache
(:func:`~autoglm_bench.lm.vlm.image_choice_loglikelihoods`); generation is greedy, one example at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..config import VLM_KINDS, ConfigError, ModelConfig
from ..data.images import IMAGE_MARKER, ImageText
from ..scoring import ScoreStats
from .base import LM, Requests
from .fingerprint import model_fingerprint
from .hf import resolve_device
from .vlm import GLM4V_FAMILY, image_choice_loglikelihoods, load_processor

__all__ = ["HFVLM", "VLM_KINDS", "load", "load_model", "resolve_device", "wrap"]
GLM4V_IMAGE = "<|begin_of_image|><|image|><|end_of_image|>"


@dataclass
class HFVLM(LM):
    """A vision-language model ready to score: the HF model (eval mode, on its device), its processor.

    >>> lm = load(ModelConfig(name="tiny_glm4v", kind="tiny_glm4v"))  # doctest: +SKIP
    >>> lm.loglikelihood([(ImageText("<image>What colour is the shape?\\nAnswer:", (image,)), [" red", " blue"])])
    ([[-9.1, -9.4]], ScoreStats(examples=1, tokens=..., seconds=...))
    """

    name: str
    model: Any
    processor: Any
    device: Any
    dtype: Any
    fingerprint: str
    max_length: int
    backend = "hf"

    @property
    def tokenizer(self) -> Any:  # what prompt rendering asks for: its chat template, token counts
        return self.processor.tokenizer

    def placeholder(self) -> str:
        if self.model.config.model_type in GLM4V_FAMILY:
            return GLM4V_IMAGE
        return self.processor.image_token

    def inputs(self, context: Any) -> tuple[str, list[Any]]:
        """(text for the processor, images) of a context: ``<image>`` markers become the model's placeholder."""
        if not isinstance(context, ImageText):
            return context, []
        text = context.text
        if text.count(IMAGE_MARKER) != len(context.images):
            raise ConfigError(
                f"a prompt has {text.count(IMAGE_MARKER)} {IMAGE_MARKER} markers for {len(context.images)} images"
            )
        return text.replace(IMAGE_MARKER, self.placeholder()), list(context.images)

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        """Summed log-probability of each continuation; ``batch_size`` and ``scorer`` do not apply (one
        example per forward pass, its choices batched over its context's KV cache)."""
        import torch
        from tqdm.auto import tqdm

        start, out, tokens = time.perf_counter(), [], 0
        with torch.inference_mode():
            for context, continuations in tqdm(requests, disable=not progress or None, leave=False):
                text, images = self.inputs(context)
                scored = image_choice_loglikelihoods(self.model, self.processor, text, images, continuations,
                                                     max_length=self.max_length)  # fmt: skip
                out.append([s for s, _ in scored])
                tokens += len(self.processor.tokenizer(text)["input_ids"])
        return out, ScoreStats(len(requests), tokens, time.perf_counter() - start)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        """Greedy continuation of each context, cut at the first stop string."""
        import torch
        from tqdm.auto import tqdm

        start, out, tokens = time.perf_counter(), [], 0
        with torch.inference_mode():
            for context in tqdm(contexts, disable=not progress or None, leave=False):
                text, images = self.inputs(context)
                enc = self.encode(text, images)
                n = enc["input_ids"].shape[1]
                ids = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[0, n:]
                generated = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
                for stop in until:
                    generated = generated.split(stop)[0] if stop else generated
                out.append(generated)
                tokens += n + len(ids)
        return out, ScoreStats(len(contexts), tokens, time.perf_counter() - start)

    def encode(self, text: str, images: list[Any]) -> Any:
        """The processor's tensors for one prompt, on the model's device (pixels in the model's dtype)."""
        enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        if enc["input_ids"].shape[1] > self.max_length:
            raise ConfigError(
                f"a prompt of {enc['input_ids'].shape[1]} tokens (images expanded) exceeds model.max_length="
                f"{self.max_length}"
            )
        enc = enc.to(self.device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.dtype)
        return enc


def model_path(cfg: ModelConfig) -> str:
    """tiny_glm4v's cache folder (built on first use), else ``model.path``."""
    if cfg.kind == "tiny_glm4v":
        from .tiny_glm4v import build_tiny_glm4v

        return str(build_tiny_glm4v(cfg, language_model=language_model(cfg)))
    from .hf import model_path as hf_model_path

    return hf_model_path(cfg)


def language_model(cfg: ModelConfig) -> str | None:
    """The text model tiny_glm4v starts from (``model.language_model``): a tiny_glm folder, ``shapes_text``
    (tiny_glm first trained on toy_shapes scenes written as words, as ``bench shapes-projector``'s step 1:
    colour questions, 80 steps of 16, seeded by ``model.seed``), or null (random, from ``model.seed``)."""
    if cfg.language_model is None:
        return None
    if cfg.language_model == "shapes_text":
        from .shapes_text import train_shapes_text_glm

        return str(train_shapes_text_glm(("colour",), seed=cfg.seed))
    return cfg.language_model


def load_model(cfg: ModelConfig, dtype: Any) -> tuple[Any, Any, str]:
    """(model, processor, path) of a VLM config: safetensors unless ``allow_pickle``, remote code only
    when trusted; a failure is a one-line :class:`ConfigError`."""
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    path = model_path(cfg)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    try:
        model_type = AutoConfig.from_pretrained(path, **common).model_type
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=dtype, use_safetensors=None if cfg.allow_pickle else True, **common
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not load vision-language model {cfg.name!r} from {path!r}: {first}") from exc
    processor = load_processor(path, model_type, cfg.revision, cfg.trust_remote_code)
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor, path


def load(cfg: ModelConfig, adapter: str | None = None) -> HFVLM:
    """Load a vision-language model and its processor for scoring; ``adapter``: a PEFT adapter folder merged in."""
    from .hf import identity, merge_adapter, resolve_dtype

    device = resolve_device(cfg)
    dtype = resolve_dtype(cfg, device)
    model, processor, path = load_model(cfg, dtype)
    fingerprint, max_length = identity(cfg, path, model.config.get_text_config(), dtype)
    if adapter is not None:
        model = merge_adapter(model, adapter)
        fingerprint = model_fingerprint(adapter, None, fingerprint)
    return wrap(cfg, model, processor, device, dtype, fingerprint, max_length)


def wrap(cfg: ModelConfig, model: Any, processor: Any, device: Any, dtype: Any, fingerprint: str, max_length: int):
    """An :class:`HFVLM` around a model already in memory (moved to ``device``, eval mode)."""
    model.to(device).eval()
    return HFVLM(cfg.name, model, processor, device, dtype, fingerprint, max_length)
