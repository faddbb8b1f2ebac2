"""The images of a rendered prompt: which row fields hold them, where their ``<image>`` markers go, and the
model input that carries them (:class:`~autoglm_bench.data.images.ImageText`).

A task names its image fields (``task.images``); a field holds one image (a path under the data folder, bytes,
base64 or a data URL: :func:`autoglm_bench.data.images.load_image`), a list of them, or null (no image, as MMMU's
``image_2`` ... ``image_7`` often are). Each user turn (a demo or the query) carries its row's images; its text
holds one ``<image>`` marker per image (lm-evaluation-harness's convention), and a template without any marker
gets them in front of its text. Demos are earlier chat turns, each with its own images, so a k-shot prompt
holds the images of its demos, then the query's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ConfigError, TaskConfig
from .data.images import IMAGE_MARKER, ImageLimits, ImageText, load_image

IMAGE_ROOT = "_image_root"  # the row key naming the folder its image paths are relative to (set by load_task)


def row_images(task: TaskConfig, row: dict[str, Any], limits: ImageLimits | None = None) -> list[Any]:
    """The decoded images of ``row``, in the order of ``task.images`` (a list field: in its order)."""
    root = row.get(IMAGE_ROOT)
    images = []
    for name in task.images:
        if name not in row:
            fields = ", ".join(k for k in row if not k.startswith("_"))
            raise ConfigError(f"task {task.name!r}: image field {name!r} is not in the row; rows have: {fields}")
        value = row[name]
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                images.append(load_image(item, Path(root) if root else None, limits))
    return images


def with_markers(task: TaskConfig, text: str, n_images: int) -> str:
    """``text`` with one ``<image>`` marker per image: as written, or all in front when it has none."""
    found = text.count(IMAGE_MARKER)
    if found == n_images:
        return text
    if found == 0:
        return IMAGE_MARKER * n_images + text
    raise ConfigError(
        f"task {task.name!r}: a prompt has {found} {IMAGE_MARKER} markers for {n_images} images; "
        f"write one per image, or none to put them all first"
    )


def model_input(text: str, images: list[Any]) -> str | ImageText:
    """What the LM is given: the text alone, or the text with its images."""
    return ImageText(text, tuple(images)) if images else text
