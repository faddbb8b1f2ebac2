"""Fine-tuning's side of loading: the weights in train mode, with a PEFT method applied."""

from __future__ import annotations

import re
from typing import Any

from ..config import VLM_KINDS, ConfigError, ModelConfig, PeftConfig
from .hf import from_pretrained, model_path


def load_for_training(cfg: ModelConfig, peft: PeftConfig, num_labels: int | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) for fine-tuning: in train mode, float32 weights (the trainer's
    ``precision`` decides the compute dtype), on the CPU (Lightning moves it), with the PEFT method of
    ``peft`` applied. ``num_labels`` given: a sequence-classification head (encoder models); otherwise a
    causal LM. A LoRA target module the model lacks is a :class:`ConfigError`, raised before training.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if cfg.kind in VLM_KINDS:
        return load_vlm_for_training(cfg, peft)
    if peft.method == "projector":
        raise ConfigError(f"peft=projector trains a vision-language model's projector; {cfg.name!r} has none")
    auto = AutoModelForSequenceClassification if num_labels is not None else AutoModelForCausalLM
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    model, tokenizer = from_pretrained(cfg, model_path(cfg), auto, torch.float32, **extra)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return apply_peft(model, peft, task_type="SEQ_CLS" if num_labels is not None else "CAUSAL_LM"), tokenizer


def load_vlm_for_training(cfg: ModelConfig, peft: PeftConfig) -> tuple[Any, Any]:
    """(model, processor) of a vision-language model for fine-tuning, float32, in train mode: ``full`` trains
    every weight; ``projector`` only the vision-to-language projector (:func:`~.vlm.train_projector_only`;
    vision encoder and language model stay bit-identical); ``lora`` adapters on the language model's
    attention (``peft.target_modules``, default q_proj and v_proj), never on the vision tower."""
    import torch

    from .hf_vlm import load_model
    from .vlm import train_projector_only

    model, processor, _ = load_model(cfg, torch.float32)
    model.train()
    if peft.method == "projector":
        train_projector_only(model)
        return model, processor
    if peft.method == "lora":
        import peft as peft_lib

        language = model.model.language_model
        targets = lora_targets(language, peft)
        pattern = rf"^model\.language_model\..*\.({'|'.join(map(re.escape, targets))})$"
        config = peft_lib.LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=pattern)
        return peft_lib.get_peft_model(model, config), processor
    if peft.method != "full":
        raise ConfigError(f"peft={peft.method} is not built for vision-language models; use full, lora or projector")
    return model, processor


def apply_peft(model: Any, peft: PeftConfig, task_type: str) -> Any:
    """Wrap ``model`` with the PEFT method of ``peft`` (``full`` returns it unchanged, all weights trainable).

    >>> m = apply_peft(model, PeftConfig(method="lora", target_modules=["q_proj"]), "CAUSAL_LM")  # doctest: +SKIP
    >>> m.print_trainable_parameters()  # doctest: +SKIP
    """
    if peft.method == "full":
        return model
    import peft as peft_lib

    if peft.method == "lora":
        targets = lora_targets(model, peft)
        config: Any = peft_lib.LoraConfig(
            task_type=task_type, r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, target_modules=targets
        )
    elif peft.method == "prefix":
        if task_type != "CAUSAL_LM" and not _takes_past_key_values(model):
            raise ConfigError(
                f"peft=prefix needs a model that takes past key values; {model.config.model_type} "
                f"({type(model).__name__}) does not; use peft=lora or peft=prompt_tuning"
            )
        config = peft_lib.PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens, prefix_projection=peft.prefix_projection
        )
    elif peft.method == "prompt_tuning":
        config = peft_lib.PromptTuningConfig(task_type=task_type, num_virtual_tokens=peft.num_virtual_tokens)
    else:
        raise ConfigError(f"unknown peft method {peft.method!r}; allowed: full, lora, prefix, prompt_tuning")
    return peft_lib.get_peft_model(model, config)


def _takes_past_key_values(model: Any) -> bool:
    """Whether a non-causal model (or its backbone) takes ``past_key_values``, the argument through which
    PEFT feeds prefixes to it (PEFT checks the same name and fails at the first forward pass otherwise)."""
    import inspect

    return any(
        "past_key_values" in inspect.signature(m.forward).parameters
        for m in (model, getattr(model, "base_model", model))
    )


def lora_targets(model: Any, peft: PeftConfig) -> list[str]:
    """The LoRA target module names: ``peft.target_modules``, each checked to exist in ``model``."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = list(peft.target_modules or DEFAULTS.get(model.config.model_type) or ["q_proj", "v_proj"])
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ConfigError(
            f"LoRA target module {', '.join(map(repr, missing))} is not in model {model.config.model_type!r}; "
            f"its linear modules are: {', '.join(linear)}"
        )
    return targets
