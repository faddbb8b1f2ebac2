"""The shipped image tasks: ``toy_shapes`` (rendered by the project) and ``digits`` (scikit-learn's).

Neither needs a download. Each is written once, as PNG files plus one ``metadata.jsonl`` per split, to a
folder under ``$AUTOGLM_CACHE_DIR`` named for the recipe (a changed setting or generator gets a new
folder; a concurrent writer either wins or finds the folder ready). The layout is Hugging Face's
``imagefolder``: ``<folder>/<split>/metadata.jsonl`` rows name their PNG in ``file_name``, so
``datasets.load_dataset("imagefolder", data_dir=folder)`` (and lm-evaluation-harness through it) reads
the same images and rows as our task hook. The rows the hook returns hold the image as a path relative
to that folder (``"validation/00003.png"``), which :meth:`image_root` names.

``toy_shapes``: 64 x 64 pictures of coloured shapes with four kinds of four-way questions (which shape,
which colour, how many, where), balanced over kinds and answers, deterministic from ``options.seed``.
``digits``: the 1,797 8 x 8 handwritten digits of ``sklearn.datasets.load_digits`` drawn dark on white
and enlarged to 32 x 32 (each pixel a 4 x 4 block), split once into 1,297 train and 500 test rows by a
fixed permutation (``numpy.random.default_rng(0)``), whatever the run's seeds.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..paths import cache_dir, write_once
from .tasks import TaskHook

IMAGE_TASKS_FORMAT = 1  # bump when a generator below changes, so cached folders are rewritten

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 200, 30)}
COUNTS = ("one", "two", "three", "four")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
QUESTIONS = {
    "shape": ("What shape is in the image?", SHAPES),
    "colour": ("What colour is the shape?", tuple(COLOURS)),
    "count": ("How many shapes are in the image?", COUNTS),
    "position": ("Where is the shape?", QUADRANTS),
}
SIZE = 64
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}

Row = dict[str, Any]


class ImageFolderTask(TaskHook):
    """A task whose rows and PNGs are generated once into a cache folder (see the module docstring)."""

    splits: tuple[str, ...] = ()

    def validate(self, data_dir: Path | None) -> None:
        for split in self.cfg.splits.values():
            if split not in self.splits:
                raise ConfigError(f"{self.name} has splits {', '.join(self.splits)}, not {split!r}")
        self.recipe()  # bad options fail here, before any model loads

    def image_root(self, data_dir: Path | None) -> Path:
        return self.folder()

    def load(self, split: str, data_dir: Path | None) -> list[Row]:
        folder = self.folder()
        with (folder / split / "metadata.jsonl").open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        return [
            {**{k: v for k, v in r.items() if k != "file_name"}, "image": f"{split}/{r['file_name']}"} for r in rows
        ]

    def recipe(self) -> dict[str, Any]:
        """What the generated folder depends on (its cache key)."""
        raise NotImplementedError

    def generate(self, split: str) -> Iterator[tuple[Any, Row]]:
        """(PIL image, row) pairs of one split, in order."""
        raise NotImplementedError

    def folder(self) -> Path:

        recipe = {"task": self.name, "format": IMAGE_TASKS_FORMAT, **self.recipe()}
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        return write_once(cache_dir() / self.name / key, lambda staging: self._write(staging, recipe))

    def _write(self, folder: Path, recipe: dict[str, Any]) -> None:
        for split in self.splits:
            (folder / split).mkdir()
            with (folder / split / "metadata.jsonl").open("w", encoding="utf-8") as f:
                for i, (image, row) in enumerate(self.generate(split)):
                    name = f"{i:05d}.png"
                    image.save(folder / split / name, format="PNG")
                    f.write(json.dumps({"file_name": name, **row}) + "\n")
        (folder / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- toy_shapes


class ToyShapes(ImageFolderTask):
    """Rows ``{"image", "kind", "question", "options" (4), "label", "answer", "description"}`` (the
    description answers every question in words, for text-only baselines). ``task.options``: ``seed``,
    ``train_size``, ``eval_size`` (rows per split) and ``questions`` (the kinds asked, default all of
    shape, colour, count, position)."""

    name = "toy_shapes"
    splits = tuple(SPLIT_SEEDS)

    def kinds(self) -> list[str]:
        kinds = self.cfg.options.get("questions", list(QUESTIONS))
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in kinds if k not in QUESTIONS]
        if unknown or not kinds:
            raise ConfigError(
                f"toy_shapes questions {unknown or kinds} not allowed; choose from {', '.join(QUESTIONS)}"
            )
        return kinds

    def recipe(self) -> dict[str, Any]:
        sizes = {"seed": 0, "train_size": 400, "eval_size": 200}
        for name, default in sizes.items():
            value = self.cfg.options.get(name, default)
            least = 0 if name == "seed" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"toy_shapes option {name}={value!r} must be an integer >= {least}")
            sizes[name] = value
        return {**sizes, "questions": self.kinds()}

    def generate(self, split: str) -> Iterator[tuple[Any, Row]]:
        recipe = self.recipe()
        size = recipe["train_size" if split == "train" else "eval_size"]
        rng = random.Random(recipe["seed"] * 1000 + SPLIT_SEEDS[split])
        kinds = recipe["questions"]
        # balanced: kinds in turn, and within a kind every answer in turn; then shuffled
        plan = [(kinds[i % len(kinds)], (i // len(kinds)) % 4) for i in range(size)]
        rng.shuffle(plan)
        for kind, label in plan:
            question, options = QUESTIONS[kind]
            shapes = shape_scene(kind, label, rng)
            yield draw_shapes(shapes), {"kind": kind, "question": question, "options": list(options),
                                        "label": label, "answer": options[label],
                                        "description": describe(shapes)}  # fmt: skip


def shape_scene(kind: str, label: int, rng: random.Random) -> list[tuple[str, str, int, int, int]]:
    """The shapes ``(shape, colour, x, y, radius)`` of one picture whose answer to ``kind`` is ``label``."""
    shape, colour = rng.choice(SHAPES), rng.choice(tuple(COLOURS))
    if kind == "shape":
        shape = SHAPES[label]
    if kind == "colour":
        colour = tuple(COLOURS)[label]
    if kind == "count":  # 1-4 shapes, each in its own quadrant, so they never touch
        quadrants = rng.sample(range(4), label + 1)
        return [(shape, colour, *_in_quadrant(q, 6, rng), 6) for q in quadrants]
    if kind == "position":
        return [(shape, colour, *_in_quadrant(label, 8, rng), 8)]
    radius = rng.randint(9, 13)
    return [(shape, colour, rng.randint(radius, SIZE - radius), rng.randint(radius, SIZE - radius), radius)]


def describe(shapes: list[tuple[str, str, int, int, int]]) -> str:
    """The picture in words, answering all four questions: ``"one red circle at the top left"``,
    ``"three blue squares"`` (several shapes are always alike, one per quadrant)."""
    shape, colour, x, y, _ = shapes[0]
    if len(shapes) > 1:
        return f"{COUNTS[len(shapes) - 1]} {colour} {shape}s"
    return f"one {colour} {shape} at the {QUADRANTS[2 * (y >= SIZE // 2) + (x >= SIZE // 2)]}"


def _in_quadrant(quadrant: int, radius: int, rng: random.Random) -> tuple[int, int]:
    half = SIZE // 2
    x0, y0 = (quadrant % 2) * half, (quadrant // 2) * half
    return rng.randint(x0 + radius + 1, x0 + half - radius - 1), rng.randint(y0 + radius + 1, y0 + half - radius - 1)


def draw_shapes(shapes: list[tuple[str, str, int, int, int]]) -> Any:
    """A white 64 x 64 RGB picture of ``shapes``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for shape, colour, x, y, r in shapes:
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        else:
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    return image


# ---------------------------------------------------------------- digits


DIGITS_TEST_SIZE = 500
DIGITS_SCALE = 4  # 8 x 8 -> 32 x 32


class Digits(ImageFolderTask):
    """Rows ``{"image", "label" (0-9), "index" (the row of load_digits)}``; splits ``train`` and ``test``."""

    name = "digits"
    splits = ("train", "test")

    def recipe(self) -> dict[str, Any]:
        return {"test_size": DIGITS_TEST_SIZE, "scale": DIGITS_SCALE}

    def generate(self, split: str) -> Iterator[tuple[Any, Row]]:
        import numpy as np
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        test = set(np.random.default_rng(0).permutation(len(digits.target))[:DIGITS_TEST_SIZE].tolist())
        for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            if (index in test) != (split == "test"):
                continue
            ink = (255 - np.rint(pixels * 255 / 16)).astype(np.uint8)  # 0-16 intensities, dark on white
            image = Image.fromarray(ink).resize((8 * DIGITS_SCALE,) * 2, Image.Resampling.NEAREST)
            yield image, {"label": int(label), "index": index}
