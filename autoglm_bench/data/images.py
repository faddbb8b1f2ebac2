"""Image inputs: an image field of a task row (or of a served request) turned into a PIL image, safely.

A value may be

- a path relative to the data folder (``"images/0001.png"``), confined to it: ``..``, absolute paths and
  symbolic links leading outside are refused;
- raw bytes, or a ``{"bytes": ..., "path": ...}`` dict as Hugging Face ``datasets`` stores images;
- a base64 string, or a data URL (``data:image/png;base64,...``);
- a PIL image already decoded (a ``datasets`` Image feature).

Remote URLs (``http://``, ``https://``, any ``scheme://``) are never fetched. Every value is checked
against :class:`ImageLimits` before it is decoded: its encoded size first, then its pixel count as the
file header states it, so a 20,000 x 20,000 PNG is refused without allocating its pixels. Bad input is
an :class:`ImageError` whose message is one line naming the value and what is allowed.

:func:`image_digest` identifies an image by its decoded pixels, for cache keys: the same picture saved
as PNG or re-encoded losslessly has the same digest; any changed pixel changes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]+={0,2}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BOMB = re.compile(r"\((\d+) pixels\)")


class ImageError(ConfigError):
    """A bad image input; the message is one line naming the value and what is allowed."""


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost: encoded bytes and decoded pixels (width x height), both checked before
    decoding. The defaults admit a 6,000 x 6,000 photo (about 108 MB of RGB pixels) and refuse more."""

    max_pixels: int = 36_000_000
    max_bytes: int = 32 * 2**20


def load_image(value: Any, root: Path | None = None, limits: ImageLimits | None = None) -> Any:
    """Decode one image input (see the module docstring for the forms it may take) into a PIL image,
    EXIF orientation applied (as ``transformers.image_utils.load_image`` does).

    >>> load_image("shapes/0001.png", root=Path("data/toy_shapes")).size  # doctest: +SKIP
    (64, 64)
    >>> load_image("http://example.com/cat.png")  # doctest: +SKIP
    ImageError: remote image URL 'http://example.com/cat.png' is not fetched; give a path under the data
    folder, base64 or a data: URL
    """
    from PIL import Image

    limits = limits or ImageLimits()
    if isinstance(value, Image.Image):
        _check_pixels(value.size, limits, "image")
        return value
    data, label = _image_bytes(value, root, limits)
    return decode_image(data, limits, label)


def decode_image(data: bytes, limits: ImageLimits | None = None, label: str = "image") -> Any:
    """Decode encoded image ``data`` (PNG, JPEG, ...) after checking its size and its header's pixel count."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    limits = limits or ImageLimits()
    _check_bytes(len(data), limits, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # over PIL's hard limit: refused from the header as well
        found = _BOMB.search(str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageError(f"{label}: {pixels}; at most {limits.max_pixels:,} are allowed") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image; expected PNG, JPEG, GIF, WebP, BMP or TIFF") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: unreadable image header ({_first_line(exc)})") from None
    _check_pixels(image.size, limits, label)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: truncated or corrupt image ({_first_line(exc)})") from None
    return ImageOps.exif_transpose(image)


def image_digest(image: Any) -> str:
    """SHA-256 of an image's mode, size and pixels (hex, 16 characters): the part of a cache key that
    stands for an image.

    >>> from PIL import Image
    >>> image_digest(Image.new("RGB", (2, 2), "red")) == image_digest(Image.new("RGB", (2, 2), (255, 0, 0)))
    True
    """
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


def encode_png(image: Any) -> bytes:
    """The image as PNG bytes (deterministic for the same pixels)."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(image: Any) -> str:
    """The image as a ``data:image/png;base64,...`` URL (what /v1/chat/completions ``image_url`` parts carry)."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


IMAGE_MARKER = "<image>"  # where an image goes in a template or a prompt, as in lm-evaluation-harness


@dataclass(frozen=True)
class ImageText:
    """A model input with images: the prompt ``text``, holding one :data:`IMAGE_MARKER` per image, and the
    decoded ``images`` in that order. What an LM with images (:mod:`autoglm_bench.lm.hf_vlm`) takes as a
    context; the request cache keys it by :meth:`cache_key`, the text and the images' content digests.

    >>> ImageText("<image>Which digit?", (image,)).cache_key()  # doctest: +SKIP
    {'text': '<image>Which digit?', 'images': ['3f0c9a1e5b7d2c44']}
    """

    text: str
    images: tuple[Any, ...] = ()

    @cached_property
    def digests(self) -> list[str]:
        return [image_digest(image) for image in self.images]

    def cache_key(self) -> dict[str, Any]:
        return {"text": self.text, "images": self.digests}


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: an :class:`ImageText` as its cache key."""
    if isinstance(value, ImageText):
        return value.cache_key()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# ---------------------------------------------------------------- the input forms


def _image_bytes(value: Any, root: Path | None, limits: ImageLimits) -> tuple[bytes, str]:
    """(encoded bytes, a short label for errors) of any accepted form but a decoded image."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets' Image storage
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ImageError("image field holds neither bytes nor a path")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), "image (bytes)"
    if not isinstance(value, str):
        raise ImageError(
            f"image value of type {type(value).__name__} is not supported; give a path, bytes, base64 or a data: URL"
        )
    text = value.strip()
    if text[:5].lower() == "data:":
        return _from_data_url(text, limits), "image (data: URL)"
    if _SCHEME.match(text):
        raise ImageError(
            f"image URL {_short(text)!r}: URLs are never fetched; "
            "give a path under the data folder, base64 or a data: URL"
        )
    if len(text) >= 32 and "." not in text and _BASE64.fullmatch(text):
        return _b64decode(text, limits, "image (base64)"), "image (base64)"
    return _read_confined(text, root, limits), f"image {_short(text)!r}"


def _from_data_url(text: str, limits: ImageLimits) -> bytes:
    header, sep, payload = text.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise ImageError(f"data URL {_short(text)!r} is not base64; expected data:image/<type>;base64,<data>")
    media = header[5:].split(";")[0].lower()
    if media and not media.startswith("image/"):
        raise ImageError(f"data URL of type {media!r} is not an image; expected data:image/<type>;base64,<data>")
    return _b64decode(payload, limits, "image (data: URL)")


def _b64decode(payload: str, limits: ImageLimits, label: str) -> bytes:
    _check_bytes(len(payload) * 3 // 4, limits, label)  # refuse before decoding a huge string
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"{label}: not valid base64 ({_first_line(exc)})") from None


def _read_confined(relative: str, root: Path | None, limits: ImageLimits) -> bytes:
    if root is None:
        raise ImageError(f"image path {_short(relative)!r} needs a data folder (data_dir); none is set")
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise ImageError(f"image path {_short(relative)!r} is outside the data folder {base}; give a path inside it")
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    _check_bytes(path.stat().st_size, limits, f"image {_short(relative)!r}")
    return path.read_bytes()


# ---------------------------------------------------------------- limits


def _check_bytes(n: int, limits: ImageLimits, label: str) -> None:
    if n > limits.max_bytes:
        raise ImageError(f"{label}: {n:,} bytes; at most {limits.max_bytes:,} are allowed")


def _check_pixels(size: tuple[int, int], limits: ImageLimits, label: str) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{label}: {width:,} x {height:,} pixels ({width * height:,}); at most {limits.max_pixels:,} are allowed"
        )


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
