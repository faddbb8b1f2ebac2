"""Vision-language models: their processors, their vision-to-language projector, and image-aware inputs.

GLM-4V's processor (``Glm4vProcessor``) takes a video processor, and transformers 5 refuses to build it
without torchvision, even for images only (the video processor's base class lives behind torchvision).
:class:`Glm4vImageTextProcessor` is the same processor less the video part: its image handling
(``<|image|>`` expanded to one token per merged patch, ``mm_token_type_ids`` for the 3-D rotary
positions) is ``Glm4vProcessor``'s own code, inherited. :func:`load_processor` uses it for GLM-4V
folders where torchvision is missing and ``AutoProcessor`` elsewhere.

The projector is what maps the vision encoder's features into the language model's embedding space (a
LLaVA-style modality adapter); ``peft=projector`` trains it alone (:func:`train_projector_only`).
"""

from __future__ import annotations

from typing import Any

from transformers import Glm4vProcessor
from transformers.processing_utils import ProcessorMixin

from ..config import ConfigError

# The projector of each architecture: the modules between the vision encoder's last block (and its final
# norm) and the language model. GLM-4V: ``downsample``, a 2x2 stride-2 convolution that merges 2x2
# patches and maps the vision width to the language model's, then ``merger``, an MLP (linear,
# LayerNorm, GELU, SwiGLU) in the language model's width; together they are Qwen2-VL's ``merger``
# (which concatenates 2x2 patches and applies an MLP). LLaMA-Factory freezes ``visual.merger`` alone as
# GLM-4V's projector and leaves ``downsample`` to neither side. LLaVA: ``multi_modal_projector``.
PROJECTORS = {
    "glm4v": ("model.visual.downsample", "model.visual.merger"),
    "glm4v_moe": ("model.visual.downsample", "model.visual.merger"),
    "llava": ("model.multi_modal_projector",),
}
GLM4V_FAMILY = ("glm4v", "glm4v_moe")


class Glm4vImageTextProcessor(Glm4vProcessor):
    """GLM-4V's processor for images and text only: builds and loads without torchvision.

    >>> processor = Glm4vImageTextProcessor.from_pretrained(folder)  # doctest: +SKIP
    >>> batch = processor(text=["<|begin_of_image|><|image|><|end_of_image|>Shape?"], images=[image])  # doctest: +SKIP
    >>> sorted(batch)  # doctest: +SKIP
    ['attention_mask', 'image_grid_thw', 'input_ids', 'mm_token_type_ids', 'pixel_values']
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs):
        # Glm4vProcessor.__init__ less the video processor, which ProcessorMixin would type-check
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.video_start_id = tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
        self.video_end_id = tokenizer.convert_tokens_to_ids("<|end_of_video|>")


def register_processors() -> None:
    """Let ``transformers.AutoProcessor`` load GLM-4V folders without torchvision (also for code that
    calls it directly, such as lm-evaluation-harness's ``hf-multimodal``): a folder naming
    :class:`Glm4vImageTextProcessor` resolves to it, and a GLM-4V config falls back to it."""
    from transformers import AutoProcessor, Glm4vConfig

    AutoProcessor.register(Glm4vConfig, Glm4vImageTextProcessor, exist_ok=True)


def load_processor(path: str, model_type: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The processor of a vision-language model folder or hub id: for GLM-4V without torchvision
    :class:`Glm4vImageTextProcessor`, else ``AutoProcessor``. A folder without an image processor (where
    ``AutoProcessor`` quietly returns a bare tokenizer) is a :class:`ConfigError`.
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        if model_type in GLM4V_FAMILY and not is_torchvision_available():
            processor = Glm4vImageTextProcessor.from_pretrained(path, **common)
        else:
            processor = AutoProcessor.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"could not load the processor of {path!r}: {first}") from exc
    if not hasattr(processor, "image_processor"):
        raise ConfigError(f"{path!r} has no image processor (preprocessor_config.json or processor_config.json)")
    return processor


def projector_modules(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of the vision-to-language projector of ``model`` (see :data:`PROJECTORS`)."""
    model_type = model.config.model_type
    if model_type not in PROJECTORS:
        raise ConfigError(
            f"peft=projector does not know the projector of model type {model_type!r}; known: {', '.join(PROJECTORS)}"
        )
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in PROJECTORS[model_type]]


def train_projector_only(model: Any) -> list[str]:
    """Freeze every parameter of ``model`` but the projector's (``peft=projector``); returns the names of
    the trainable parameters. The frozen ones take no gradient and so stay bit-identical; the caller
    must still keep them out of the optimizer (weight decay) and the model in eval mode where dropout
    would otherwise differ (tiny and real GLM-4V use none)."""
    names = [name for name, _ in projector_modules(model)]
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(name == n or name.startswith(n + ".") for n in names))
        if param.requires_grad:
            trainable.append(name)
    return trainable


# ---------------------------------------------------------------- scoring with images


def image_choice_loglikelihoods(
    model: Any, processor: Any, context: str, images: list[Any], continuations: list[str], max_length: int | None = None
) -> list[tuple[float, bool]]:
    """lm-evaluation-harness's ``(sum of log-probabilities, is greedy)`` of each continuation after
    ``context`` and its ``images``, for a GLM-4V-style model (3-D rotary positions).

    One forward pass over the context (the vision tower runs once), then every continuation in one batch
    over the context's KV cache, its positions continuing where the context's end (after an image, a
    GLM-4V position runs ahead of the token count). Logits are projected only where a continuation token
    is predicted. The context and continuation split as lm-eval splits them: a context's trailing spaces
    move to the continuation, and continuation tokens are those of ``tokenize(context + continuation)``
    after ``tokenize(context)``. Inputs go to the model's device, pixels in its dtype; a context longer than
    ``max_length`` tokens (images expanded, longest continuation included) is a :class:`ConfigError`.

    >>> context = "<|image|>Shape?\\nAnswer:"
    >>> image_choice_loglikelihoods(model, processor, context, [image], [" circle", " square"])  # doctest: +SKIP
    [(-3.1, False), (-2.2, True)]
    """
    import torch

    stripped = context.rstrip()
    tail = context[len(stripped) :]
    enc = processor(text=[stripped], images=images or None, return_tensors="pt").to(model.device)
    if "pixel_values" in enc:
        enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
    ctx_ids, text_ctx = enc["input_ids"], processor.tokenizer(stripped)["input_ids"]
    conts = []
    for continuation in continuations:
        whole = processor.tokenizer(stripped + tail + continuation)["input_ids"]
        if whole[: len(text_ctx)] != text_ctx or len(whole) == len(text_ctx):
            raise ValueError(f"continuation {continuation!r} does not tokenize apart from its context")
        conts.append(whole[len(text_ctx) :])
    if max_length is not None and ctx_ids.shape[1] + max(map(len, conts)) > max_length:
        raise ConfigError(
            f"a prompt of {ctx_ids.shape[1]} tokens (images expanded) and its answer exceed "
            f"model.max_length={max_length}"
        )
    if "image_grid_thw" in enc:
        positions, _ = model.model.get_rope_index(ctx_ids, enc["mm_token_type_ids"], enc["image_grid_thw"])
    else:
        positions = torch.arange(ctx_ids.shape[1], device=model.device).view(1, 1, -1).expand(3, 1, -1)
    inputs = {k: v for k, v in enc.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        cache = out.get("cache", None) or out.get("past_key_values")
        n, longest = len(conts), max(len(c) for c in conts)
        results = [(float(first[c[0]]), bool(first.argmax() == c[0])) for c in conts]
        if longest == 1:
            return results
        cache.batch_repeat_interleave(n)
        pad = processor.tokenizer.pad_token_id or 0
        ids = torch.tensor([c[:-1] + [pad] * (longest - len(c)) for c in conts], device=model.device)
        mask = torch.tensor(
            [[1] * ctx_ids.shape[1] + [1] * (len(c) - 1) + [0] * (longest - len(c)) for c in conts], device=model.device
        )
        start = int(positions.max()) + 1
        pos = (start + torch.arange(longest - 1, device=model.device)).view(1, 1, -1).expand(3, n, -1)
        logprobs = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache).logits.float(), -1
        )
    for i, c in enumerate(conts):
        rest = torch.tensor(c[1:], device=model.device)
        lp = logprobs[i, : len(c) - 1]
        total, greedy = results[i]
        results[i] = (total + float(lp.gather(1, rest[:, None]).sum()), greedy and bool((lp.argmax(-1) == rest).all()))
    return results
