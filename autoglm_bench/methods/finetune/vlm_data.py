"""Fine-tuning data for a task with images: :class:`~.data.TaskDataModule`'s rows, split and rendering,
encoded through the vision-language model's processor.

Training sees what evaluation scores: each row is rendered by
:func:`~autoglm_bench.prompts.render_examples` (demos as earlier turns with their images), its ``<image>``
markers become the model's placeholder, and the context and answer split as
:func:`~autoglm_bench.lm.vlm.image_choice_loglikelihoods` splits them (the context through the processor,
images expanded; the answer as the tokens of ``context + answer`` after those of the context). The loss is
on the answer tokens. Rows keep their pixels; batches are right-padded (a GLM-4V row's 3-D rotary positions
are then those of the row alone) and carry ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``.
Encoded rows stay in memory (no token cache on disk: the pixels would dominate it).
"""

from __future__ import annotations

from typing import Any

import torch

from ...lm.hf_vlm import HFVLM
from ...lm.vlm import GLM4V_FAMILY
from ...prompts import chat_tokenizer, example_inputs
from .data import IGNORE, DataSpec, TaskDataModule, pad_batch


class VisionTaskDataModule(TaskDataModule):
    """Training and dev batches of an image task for a vision-language model; ``processor`` is the model's
    (its ``tokenizer`` formats chat prompts). ``model`` gives the image placeholder of its architecture."""

    def __init__(self, spec: DataSpec, processor: Any, model: Any, max_length: int):
        super().__init__(spec, processor.tokenizer, max_length, classifier=False)
        self.processor = processor
        self.lm = HFVLM(model.config.model_type, model, processor, "cpu", torch.float32, "training", max_length)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        chat = chat_tokenizer(self.prompt, self.tokenizer)
        delimiter = "" if chat is not None else self.task.cfg.target_delimiter
        examples, _, answers = self.render(self.train_rows, chat)
        contexts = example_inputs(self.task.cfg, examples, chat)
        self.train_set = [self.encode(ctx, delimiter + a) for ctx, a in zip(contexts, answers)]
        self.dev_examples, _, dev_answers = self.render(self.dev_rows, chat)
        dev_contexts = example_inputs(self.task.cfg, self.dev_examples, chat)
        if self.task.cfg.type == "multiple_choice":  # dev: every (example, choice) pair, scored like eval
            self.dev_set = [
                {**self.encode(ctx, delimiter + c), "example": i, "choice": j}
                for i, (ctx, ex) in enumerate(zip(dev_contexts, self.dev_examples))
                for j, c in enumerate(ex.choices)
            ]
        else:
            self.dev_set = [self.encode(ctx, delimiter + a) for ctx, a in zip(dev_contexts, dev_answers)]

    def encode(self, context: Any, answer: str) -> dict[str, Any]:
        """One training row: the context's ids (images expanded) + the answer's, labels on the answer."""
        text, images = self.lm.inputs(context)
        stripped = text.rstrip()
        enc = self.processor(text=[stripped], images=images or None, return_tensors="pt")
        tok = self.processor.tokenizer
        text_ctx = tok(stripped)["input_ids"]
        whole = tok(text + answer)["input_ids"]
        if whole[: len(text_ctx)] != text_ctx or len(whole) == len(text_ctx):
            raise ValueError(f"answer {answer!r} does not tokenize apart from its context")
        ctx_ids, answer_ids = enc["input_ids"][0].tolist(), whole[len(text_ctx) :]
        if len(ctx_ids) + len(answer_ids) > self.max_length:
            raise ValueError(f"a training row of {len(ctx_ids) + len(answer_ids)} tokens exceeds {self.max_length}")
        row: dict[str, Any] = {"input_ids": ctx_ids + answer_ids, "labels": [IGNORE] * len(ctx_ids) + answer_ids}
        for key in ("pixel_values", "image_grid_thw"):
            if key in enc:
                row[key] = enc[key]
        return row

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        plain = [{k: v for k, v in r.items() if k not in ("pixel_values", "image_grid_thw")} for r in rows]
        batch = pad_batch(plain, self.tokenizer.pad_token_id, left=False)
        for key in ("pixel_values", "image_grid_thw"):
            parts = [r[key] for r in rows if key in r]
            if parts:
                batch[key] = torch.cat(parts)
        config = self.lm.model.config
        if config.model_type in GLM4V_FAMILY and "image_grid_thw" in batch:  # which tokens are image tokens
            batch["mm_token_type_ids"] = (batch["input_ids"] == config.image_token_id).long()
        return batch
