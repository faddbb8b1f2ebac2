"""Model backends behind one interface (:class:`~.base.LM`), and :func:`load`, the one way the harness gets
a model: in-process Hugging Face weights (:mod:`.hf`), any OpenAI-compatible server (:mod:`.openai`), Ray
actors sharding the in-process model (:mod:`.ray`), vision-language models in-process (:mod:`.hf_vlm`), each
optionally behind the request cache (:mod:`.cache`).
"""

from __future__ import annotations

from typing import Any

from ..config import VLM_KINDS, ConfigError, ModelConfig, RayConfig
from .base import LM
from .cache import CachedLM, RequestCache, open_cache

__all__ = ["LM", "CachedLM", "RequestCache", "load", "open_cache"]


def load(
    cfg: ModelConfig,
    *,
    backend: str = "local",
    ray: RayConfig | None = None,
    cache: RequestCache | None = None,
    adapter: str | None = None,
    trained: tuple[Any, Any] | None = None,
) -> LM:
    """The model ``cfg`` describes, ready to score.

    ``backend="ray"``: the in-process model sharded over ``ray.workers`` Ray actors. ``cache``: answers from
    and stores into this request cache. ``adapter``: a PEFT adapter folder merged into the weights.
    ``trained``: a (model, tokenizer) pair (a vision-language model: (model, processor)) already in memory (a
    model just fine-tuned), scored as ``cfg``
    says (device, length limit).

    >>> lm = load(compose(["model=tiny_glm"]).model)  # doctest: +SKIP
    >>> lm.generate_until(["Once upon a time"], until=["\\n"], max_new_tokens=8)  # doctest: +SKIP
    """
    if cfg.kind == "openai":
        if backend != "local" or adapter is not None or trained is not None:
            raise ConfigError("model=openai is served elsewhere: no backend=ray, adapter or fine-tuned weights")
        from .openai import OpenAILM

        lm: LM = OpenAILM(cfg)
    elif cfg.kind in VLM_KINDS:
        from . import hf_vlm

        if backend != "local":
            raise ConfigError(f"model {cfg.name!r} is a vision-language model; it runs with backend=local only")
        if trained is not None:
            model, processor = trained
            device = hf_vlm.resolve_device(cfg)
            lm = hf_vlm.wrap(cfg, model, processor, device, model.dtype, "finetuned", cfg.max_length)
        else:
            lm = hf_vlm.load(cfg, adapter=adapter)
    elif backend == "ray":
        from .ray import RayLM

        lm = RayLM(cfg, ray or RayConfig())
    elif trained is not None:
        from . import hf

        model, tokenizer = trained
        device = hf.resolve_device(cfg)
        positions = getattr(model.config, "max_position_embeddings", None) or cfg.max_length
        lm = hf.wrap(cfg, model, tokenizer, device, model.dtype, "finetuned", min(cfg.max_length, positions))
    else:
        from . import hf

        lm = hf.load(cfg, adapter=adapter)
    return lm if cache is None else CachedLM(lm, cache)
