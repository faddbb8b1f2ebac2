"""``tiny_glm4v``: a real ``Glm4vForConditionalGeneration`` small enough for CPU tests, as ``tiny_glm`` is
for text.

The language model has ``tiny_glm``'s sizes (``model.tiny``) and tokenizer (the same locally trained
byte-level BPE, token for token) plus GLM-4V's six image and video tokens appended; the vision tower is
:class:`TinyVisionConfig` (one block, 8 x 8 patches merged 2 x 2, so a 64 x 64 image is 16 tokens).
Weights are initialised from ``model.seed``; with ``language_model`` the language model instead starts
from a trained ``tiny_glm`` folder (GLM-4V's text decoder has GLM-4's layers, so its weights carry over
unchanged, and on text alone the two models compute the same logits). Model, tokenizer, chat template
and image processor are saved as an ordinary Hugging Face folder under ``$AUTOGLM_CACHE_DIR/tiny_glm4v``
(:func:`autoglm_bench.lm.vlm.load_processor` loads its processor).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig
from ..paths import cache_dir, write_once

TINY_GLM4V_FORMAT = 1  # bump when the recipe below changes, so old cache entries are not reused
IMAGE_TOKENS = [
    "<|image|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|video|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
]
# GLM-4.1V's chat layout: tiny_glm's, with content parts; an image part is <|begin_of_image|><|image|>
# <|end_of_image|>, whose <|image|> the processor expands to one token per merged patch.
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class TinyVisionConfig:
    """The vision tower and image processor of tiny_glm4v."""

    depth: int = 1
    hidden_size: int = 32
    num_heads: int = 2
    patch_size: int = 8
    image_size: int = 64  # the grid of learned position embeddings (interpolated for other sizes)
    spatial_merge_size: int = 2
    merger_size: int | None = None  # the projector MLP's inner width; null: the language model's MLP width
    min_pixels: int = 32 * 32  # the processor resizes every image to between these many pixels
    max_pixels: int = 64 * 64


def build_tiny_glm4v(
    cfg: ModelConfig, vision: TinyVisionConfig | None = None, language_model: str | Path | None = None
) -> Path:
    """Build (once) and return the cached folder of the tiny GLM-4V of ``cfg.tiny``, ``cfg.seed`` and
    ``vision``, its language model taken from the ``tiny_glm`` folder ``language_model`` when given.

    >>> folder = build_tiny_glm4v(ModelConfig(name="tiny_glm4v", kind="tiny_glm4v"))  # doctest: +SKIP
    >>> Glm4vForConditionalGeneration.from_pretrained(folder).config.model_type  # doctest: +SKIP
    'glm4v'
    """
    from .fingerprint import model_fingerprint

    vision = vision or TinyVisionConfig()
    spec = {"format": TINY_GLM4V_FORMAT, "seed": cfg.seed, "text": asdict(cfg.tiny), "vision": asdict(vision)}
    if language_model is not None:
        spec["language_model"] = model_fingerprint(str(language_model))
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return write_once(
        cache_dir() / "tiny_glm4v" / key, lambda folder: _write_tiny_glm4v(cfg, vision, folder, language_model)
    )


def glm4v_config(cfg: ModelConfig, vision: TinyVisionConfig, tokenizer: Any) -> Any:
    """The ``Glm4vConfig`` of tiny_glm4v (sizes from ``cfg.tiny`` and ``vision``, token ids from ``tokenizer``)."""
    from transformers import Glm4Config, Glm4vConfig

    t = cfg.tiny
    if t.head_dim * t.num_attention_heads != t.hidden_size:
        raise ConfigError(
            f"tiny_glm4v needs model.tiny.head_dim * num_attention_heads == hidden_size (GLM-4V derives the "
            f"head size); got {t.head_dim} * {t.num_attention_heads} != {t.hidden_size}"
        )
    # GLM-4's rotary embedding covers half of each head (partial_rotary_factor 0.5); GLM-4V splits its
    # frequencies over (time, height, width) as 8:12:12 of 32 in the 9B model; the same proportion here.
    n = t.head_dim // 4
    mrope = [n - 2 * (3 * n // 8), 3 * n // 8, 3 * n // 8]
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in IMAGE_TOKENS}
    return Glm4vConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": Glm4Config().rms_norm_eps,  # tiny_glm's, so its language model carries over exactly
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": mrope,
            },
        },
        vision_config={
            "depth": vision.depth,
            "hidden_size": vision.hidden_size,
            "num_heads": vision.num_heads,
            "patch_size": vision.patch_size,
            "image_size": vision.image_size,
            "spatial_merge_size": vision.spatial_merge_size,
            "temporal_patch_size": 2,
            "out_hidden_size": t.hidden_size,
            "intermediate_size": vision.merger_size or t.intermediate_size,
        },
        image_token_id=ids["<|image|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_token_id=ids["<|video|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )


def tiny_processor(cfg: ModelConfig, vision: TinyVisionConfig) -> Any:
    """tiny_glm's tokenizer plus the image tokens, GLM-4V's chat template and a PIL image processor."""
    from transformers import AutoTokenizer
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from .tiny_glm import build_tiny_glm
    from .vlm import Glm4vImageTextProcessor

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_glm(cfg))  # tiny_glm's, built (and cached) once
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    tokenizer.chat_template = GLM4V_CHAT_TEMPLATE
    # the processor's pixel bounds count both frames of its 2-frame temporal patch
    size = {"shortest_edge": 2 * vision.min_pixels, "longest_edge": 2 * vision.max_pixels}
    images = Glm4vImageProcessorPil(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size, temporal_patch_size=2, size=size
    )
    return Glm4vImageTextProcessor(image_processor=images, tokenizer=tokenizer, chat_template=GLM4V_CHAT_TEMPLATE)


def _write_tiny_glm4v(cfg: ModelConfig, vision: TinyVisionConfig, folder: Path, language_model: Any) -> None:
    import torch
    import transformers
    from transformers import Glm4vForConditionalGeneration

    transformers.logging.disable_progress_bar()
    processor = tiny_processor(cfg, vision)
    tokenizer = processor.tokenizer
    torch.manual_seed(cfg.seed)
    model = Glm4vForConditionalGeneration(glm4v_config(cfg, vision, tokenizer))
    if language_model is not None:
        copy_language_model(model, Path(language_model))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def copy_language_model(model: Any, folder: Path) -> None:
    """Load a ``Glm4ForCausalLM`` folder's weights into GLM-4V ``model``'s language model and head; the
    image tokens, which the text tokenizer lacks, keep their fresh embeddings."""
    import torch
    from safetensors.torch import load_file

    source = load_file(folder / "model.safetensors")
    target = model.state_dict()
    if source["model.embed_tokens.weight"].shape[1] != target["model.language_model.embed_tokens.weight"].shape[1]:
        raise ConfigError(f"language model {folder} has another hidden size than model.tiny.hidden_size")
    with torch.no_grad():
        for name, value in source.items():
            mapped = (
                "lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name.removeprefix("model.")
            )
            if mapped not in target:
                raise ConfigError(f"language model {folder}: weight {name!r} has no place in GLM-4V")
            if value.shape == target[mapped].shape:
                target[mapped].copy_(value)
            elif name in ("model.embed_tokens.weight", "lm_head.weight") and value.shape[0] < target[mapped].shape[0]:
                target[mapped][: value.shape[0]].copy_(value)
            else:
                raise ConfigError(
                    f"language model {folder}: weight {name!r} of shape {tuple(value.shape)} does not fit"
                )
