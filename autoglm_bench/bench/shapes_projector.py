"""Train tiny_glm4v's vision-to-language projector alone on toy_shapes; print dev accuracy as it learns.

``python -m autoglm_bench.bench shapes-projector --questions colour --steps 150 --seed 0``

LLaVA's first stage, in miniature. On a random-init tiny language model a projector trained for 200 steps
stayed at chance (the model's answers hardly depend on its input), so, as LLaVA starts from a trained LM:

1. **Text.** tiny_glm learns toy_shapes questions from words alone: each scene of the toy_shapes
   generator (fresh scenes from their own seed, never a task row) is written as 16 slots (as many as
   tiny_glm4v gives a 64 x 64 picture), its colour, shape and position-or-count words each in 1-3 random
   slots (a picture shows a shape over several of its tokens) and ``.`` in the others, then the
   question and the answer; the loss is on the answer. Cached under ``$AUTOGLM_CACHE_DIR/tiny_glm_shapes_text``.
2. **Projector.** tiny_glm4v takes that language model (:func:`~autoglm_bench.lm.tiny_glm4v.build_tiny_glm4v`
   with ``language_model``); its vision tower is random (``model.seed``) and frozen, its language model
   frozen; only the projector (``downsample`` and ``merger``) trains, on the toy_shapes train rows (the
   image in place of the words), loss on the answer tokens. The frozen encoder's features are computed
   once per image. Dev accuracy is the multiple-choice accuracy on the task's validation rows, scored as
   :func:`~autoglm_bench.lm.vlm.image_choice_loglikelihoods` scores. Afterwards every parameter outside
   the projector is checked bit-identical to before.

What a frozen random vision tower offers limits what its projector can learn: a linear probe on its
features separates colours (0.99) and positions but hardly shapes or counts, and with this recipe colour
questions reach 0.9 within 150 steps on seeds 0, 1 and 2, while colour and position questions together
do not within 300.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from ..lm.shapes_text import answer_loss, pad_answers, train_shapes_text_glm

IMAGE = "<|begin_of_image|><|image|><|end_of_image|>"


def context(question: str) -> str:
    return f"{IMAGE}\n{question}\nAnswer:"


def train_projector(
    model: Any, processor: Any, rows: list[dict[str, Any]], images: list[Any], steps: int, lr: float, batch_size: int,
    seed: int = 0, on_step: Any = None,
) -> None:  # fmt: skip
    """Train ``model``'s projector alone on ``rows`` (toy_shapes rows and their PIL ``images``), loss on the
    answer; the frozen vision tower runs once per image. ``on_step(step, loss)`` is called after each step."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from ..lm.vlm import train_projector_only

    visual = model.model.visual
    frozen: dict[str, Any] = {}
    hook = visual.downsample.register_forward_hook(lambda _m, inputs, _o: frozen.__setitem__("x", inputs[0]))
    examples = []
    with torch.no_grad():
        for row, image in zip(rows, images):
            enc = processor(text=[context(row["question"]) + " " + row["answer"]], images=[image], return_tensors="pt")
            n_ctx = len(processor(text=[context(row["question"])], images=[image])["input_ids"][0])
            visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
            examples.append((enc["input_ids"][0].tolist(), n_ctx, enc["image_grid_thw"], frozen["x"]))
    hook.remove()
    params = [p for n, p in model.named_parameters() if n in set(train_projector_only(model))]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    with torch.enable_grad():  # a training step, whatever gradient mode the caller is in
        for step in range(steps):
            batch = rng.sample(examples, batch_size)
            ids, labels = pad_answers([(e[0], e[1]) for e in batch], processor.tokenizer.pad_token_id)
            grids = torch.cat([e[2] for e in batch])
            merged = visual.downsample(torch.cat([e[3] for e in batch])).view(-1, visual.config.out_hidden_size)
            per_image = (grids.prod(-1) // visual.spatial_merge_size**2).tolist()
            projected = visual.merger(merged).split(per_image)  # what get_image_features returns, from the cache
            out = model(
                input_ids=ids,
                attention_mask=(labels != -200).long(),
                mm_token_type_ids=(ids == model.config.image_token_id).long(),
                image_grid_thw=grids,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=projected)},
            )
            loss = answer_loss(out.logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step + 1, loss.item())


def dev_accuracy(model: Any, processor: Any, rows: list[dict[str, Any]], images: list[Any]) -> float:
    from ..lm.vlm import image_choice_loglikelihoods

    correct = 0
    for row, image in zip(rows, images):
        scores = image_choice_loglikelihoods(
            model, processor, context(row["question"]), [image], [" " + o for o in row["options"]]
        )
        correct += max(range(len(scores)), key=lambda j: scores[j][0]) == row["label"]
    return correct / len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", default="colour", help="toy_shapes kinds, comma-separated (default: colour)")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--dev-rows", type=int, default=100, help="validation rows scored (default 100)")
    parser.add_argument("--lm-steps", type=int, default=100, help="text training steps (default 100)")
    parser.add_argument("--steps", type=int, default=150, help="projector steps (default 150)")
    parser.add_argument("--lr", type=float, default=5e-3, help="projector learning rate (default 5e-3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=50, help="score the dev rows every N steps (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: on a busy CPU more are slower)"
    )


def run(args: argparse.Namespace) -> None:
    import torch

    from ..config import ModelConfig, compose
    from ..data.images import load_image
    from ..data.tasks import load_task
    from ..lm.hf import load_local
    from ..lm.tiny_glm4v import build_tiny_glm4v
    from ..lm.vlm import load_processor

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    questions = tuple(args.questions.split(","))
    lm = train_shapes_text_glm(questions, steps=args.lm_steps, batch_size=32, seed=args.seed)
    text_s = time.perf_counter() - start
    folder = build_tiny_glm4v(ModelConfig(name="tiny_glm4v", kind="tiny_glm4v", seed=args.seed), language_model=lm)
    processor = load_processor(str(folder), "glm4v")
    model, _ = load_local(folder, "image_text")
    overrides = [f"task.options.questions=[{args.questions}]", f"task.options.train_size={args.train_size}"]
    task = load_task(compose(["task=toy_shapes", "model=tiny_glm4v", *overrides]).task, None)
    root = task.hook.image_root(None)
    train, dev = task.rows["train"], task.rows["eval"][: args.dev_rows]
    train_images = [load_image(r["image"], root) for r in train]
    dev_images = [load_image(r["image"], root) for r in dev]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    print(f"text LM: {args.lm_steps} steps in {text_s:.1f}s (0 when cached); {folder}")
    print(f"step 0: dev accuracy {dev_accuracy(model, processor, dev, dev_images):.3f} (untrained projector)")
    clock = {"train_s": 0.0, "last": time.perf_counter()}

    def on_step(step: int, loss: float) -> None:
        clock["train_s"] += time.perf_counter() - clock["last"]
        if step % args.every == 0 or step == args.steps:
            acc = dev_accuracy(model, processor, dev, dev_images)
            print(f"step {step}: loss {loss:.3f}, dev accuracy {acc:.3f}, {clock['train_s']:.1f}s of training")
        clock["last"] = time.perf_counter()

    train_projector(model, processor, train, train_images, args.steps, args.lr, args.batch_size, args.seed, on_step)
    projector = {n for n in before if n.startswith(("model.visual.downsample.", "model.visual.merger."))}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    print(f"changed parameters: {len(changed)}, all in the projector: {changed <= projector}; "
          f"the {len(before) - len(projector)} others bit-identical: {not (changed - projector)}")  # fmt: skip
