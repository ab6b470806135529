"""Decode image files into uint8 arrays (C, H, W). Imports only numpy, Pillow and deepstep.errors: decode
workers are spawned processes, and this keeps their start-up short."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepstep.errors import reason_of

# Pillow's decompression-bomb guard, in pixels: open_image refuses images over it.
Image.MAX_IMAGE_PIXELS = 89_478_485
# What a bad image file raises, from Pillow's plugins to the bomb guard.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode (palette, RGBA, CMYK, 16-bit, ...) to RGB or L."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max() if values.size else 0
        scale = 255.0 / top if top > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as an image viewer shows them, not their hidden colour.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    mode = "RGB" if channels == 3 else "L"
    if image.mode == mode:  # convert() would copy it: about 5% of decoding a CIFAR-size JPEG
        image.load()  # decode here, where a truncated file raises, as convert() would
        return image
    return image.convert(mode)


def fit_to_size(image: Image.Image, size: tuple[int, int], resize: int | None = None) -> Image.Image:
    """Scale the short side to `resize` (default: just enough to cover the size), keeping the
    aspect ratio, then center-crop to (height, width). A no-op for an image already that size."""
    height, width = size
    if resize is None:
        if image.size == (width, height):
            return image
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    w, h = image.size
    scale = resize / min(w, h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. JPEG and WebP files carry their EXIF in
    `info` from the moment they are opened, so one without it skips the EXIF parse, which costs
    about a quarter of the decode time of a small JPEG."""
    if image.format in ("JPEG", "WEBP") and "exif" not in image.info:
        return image
    return ImageOps.exif_transpose(image)


def prepare_image(image: Image.Image, size: tuple[int, int], channels: int, resize: int | None = None) -> np.ndarray:
    """A Pillow image -> uint8 array (channels, height, width), as every model input is made."""
    image = to_model_mode(upright(image), channels)
    array = np.asarray(fit_to_size(image, size, resize), dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Image.open, refusing images over the pixel limit (Pillow itself only warns below twice it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except UnidentifiedImageError:
            if os.path.getsize(path) == 0:
                raise ValueError("empty file (0 bytes)") from None
            raise


def read_image(path: str | os.PathLike, size: tuple[int, int], channels: int, resize: int | None = None) -> np.ndarray:
    """Open, decode and prepare one image file; raises one of DECODE_ERRORS for bad files."""
    with open_image(path) as image:
        short = resize or max(size)
        image.draft("RGB" if channels == 3 else "L", (short, short))  # JPEG: decode at a reduced scale
        return prepare_image(image, size, channels, resize)


def decode_files(
    paths: Sequence[str], size: tuple[int, int], channels: int, resize: int | None = None
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode `paths` into one (N, C, H, W) uint8 array; bad files give (index, reason) and zeros."""
    out = np.zeros((len(paths), channels, *size), dtype=np.uint8)
    bad = []
    for i, path in enumerate(paths):
        try:
            out[i] = read_image(path, size, channels, resize)
        except DECODE_ERRORS as err:
            bad.append((i, describe_error(err)))
    return out, bad


def describe_error(err: BaseException) -> str:
    text = reason_of(err)
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return f"image too large: over {Image.MAX_IMAGE_PIXELS:,} pixels (decompression-bomb guard); scale it down"
    if isinstance(err, PermissionError):
        return "permission denied"
    if "cannot identify image file" in text:
        return "not an image Pillow can read"
    if "truncated" in text.lower():
        return "truncated image file"
    return text
