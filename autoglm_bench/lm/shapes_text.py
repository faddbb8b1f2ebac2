"""A text-trained start for tiny_glm4v's language model: tiny_glm taught toy_shapes questions from words.

LLaVA's first stage trains a projector into a language model that already knows the task's words; a
projector into a random tiny language model stays at chance (the model's answers hardly depend on its
input). Here each scene of the toy_shapes generator (fresh scenes from their own seed, never a task row)
is written as 16 slots (as many as tiny_glm4v gives a 64 x 64 picture), its colour, shape and
position-or-count words each in 1-3 random slots (a picture shows a shape over several of its tokens) and
``.`` in the others, then the question and the answer; the loss is on the answer. Cached under
``$AUTOGLM_CACHE_DIR/tiny_glm_shapes_text``; ``model.language_model=shapes_text`` builds tiny_glm4v on it,
and ``python -m autoglm_bench.bench shapes-projector`` trains a projector into it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from ..paths import cache_dir, write_once

SHAPES_TEXT_RECIPE = 2  # bump when train_shapes_text_glm changes, so cached models are rebuilt
SLOTS = 16  # tiny_glm4v's image tokens for a 64 x 64 picture


def train_shapes_text_glm(
    questions: tuple[str, ...] = ("colour",), steps: int = 80, lr: float = 3e-3, batch_size: int = 16, seed: int = 0
) -> Path:
    """tiny_glm (``seed``) trained on toy_shapes scenes written as words, asked ``questions`` (see the
    module docstring); cached; returns its folder. Deterministic: torch runs on one thread here."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..config import ModelConfig
    from ..data.synthetic_images import COUNTS, QUADRANTS, QUESTIONS, SIZE, shape_scene
    from .tiny_glm import build_tiny_glm

    source = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm", seed=seed))
    spec = [SHAPES_TEXT_RECIPE, source.name, sorted(questions), steps, lr, batch_size, seed]
    target = cache_dir() / "tiny_glm_shapes_text" / hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    if target.is_dir():
        return target
    rng = random.Random(10_000 + seed)  # scenes of their own: no task row is ever a training text

    def text_example() -> tuple[list[int], int]:
        kind, label = rng.choice(questions), rng.randrange(4)
        question, options = QUESTIONS[kind]
        shapes = shape_scene(kind, label, rng)
        shape, colour, x, y, _ = shapes[0]
        where = QUADRANTS[2 * (y >= SIZE // 2) + (x >= SIZE // 2)] if len(shapes) == 1 else COUNTS[len(shapes) - 1]
        # each word in 1-3 slots, as a picture shows a shape over several of its tokens
        words = [word for word in (colour, shape, where) for _ in range(rng.randint(1, 3))]
        slots = ["."] * SLOTS
        for word, slot in zip(words, rng.sample(range(SLOTS), len(words))):
            slots[slot] = word
        ctx = tokenizer(" ".join(slots) + f"\n{question}\nAnswer:")["input_ids"]
        return ctx + tokenizer(" " + options[label])["input_ids"], len(ctx)

    tokenizer = AutoTokenizer.from_pretrained(source)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        for _ in range(steps):
            ids, labels = pad_answers([text_example() for _ in range(batch_size)], tokenizer.pad_token_id)
            loss = answer_loss(model(input_ids=ids, attention_mask=(labels != -200).long()).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return write_once(target, lambda folder: (model.save_pretrained(folder), tokenizer.save_pretrained(folder)))


def pad_answers(examples: list[tuple[list[int], int]], pad: int) -> tuple[Any, Any]:
    """(right-padded ids, labels): labels are the answer tokens, -100 elsewhere, -200 on padding."""
    import torch

    longest = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids, _ in examples])
    labels = torch.full_like(ids, -100)
    for i, (tokens, n_ctx) in enumerate(examples):
        labels[i, n_ctx : len(tokens)] = ids[i, n_ctx : len(tokens)]
        labels[i, len(tokens) :] = -200
    return ids, labels


def answer_loss(logits: Any, labels: Any) -> Any:
    import torch

    targets = labels[:, 1:].masked_fill(labels[:, 1:] < 0, -100)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten())
