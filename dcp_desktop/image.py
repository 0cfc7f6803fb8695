"""Stage 1 of the data flow: an image (file, bytes or PIL image) -> the vision tensor LLaVA-1.5 expects.

    load_image(source)                      -> PIL RGB image, 8 bits per channel, EXIF orientation applied
    preprocess(image, image_size, mean, std) -> float32 array (3, image_size, image_size)

`load_image` turns every way a user's file can be wrong into one `InputError` (missing, a directory,
unreadable, not an image, truncated, too many pixels). `preprocess` is LLaVA-1.5's own pipeline
(`expand2square` with the mean colour, then CLIP's resize and normalisation), so the numbers match the
Hugging Face reference exactly.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dcp_desktop.errors import InputError

# Largest image we decode, checked on the header before any pixel is decoded. 64 MP is more than a
# full-frame camera photo; the model sees 336x336 anyway. PIL's own guard (a warning above ~89 MP, an
# error above ~179 MP) fires inside Image.open, before this check; both become the same InputError.
MAX_IMAGE_PIXELS = 64_000_000

# What errors name when the image did not come from a file (clipboard bytes or a PIL image from the GUI).
PASTED_IMAGE_NAME = "<pasted image>"

# What PIL raises while decoding damaged data; the image plugins use all of these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})  # not "La": PIL converts it to nothing else
_INT_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def load_image(source: str | os.PathLike[str] | bytes | Image.Image) -> Image.Image:
    """Open, fully decode and convert an image to 8-bit RGB (a new image; `source` is left as is).

    `source` is a path, the encoded bytes of an image file, or a PIL image (the GUI pastes both).
    Raises InputError, naming the file (or "<pasted image>"), for anything that is not a readable image.
    """
    if isinstance(source, Image.Image):
        return _decode(source, PASTED_IMAGE_NAME)
    if isinstance(source, (bytes, bytearray)):
        return _open_and_decode(io.BytesIO(source), PASTED_IMAGE_NAME)
    name = os.fspath(source)
    with _open_file(name) as file:
        return _open_and_decode(file, name)


def _open_file(name: str) -> BinaryIO:
    if os.path.isdir(name):
        raise InputError(f"{name}: expected an image file, found a directory; pass the path of an image file")
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise InputError(f"{name}: expected an image file, found no such file; check the path") from None
    except OSError as err:
        raise InputError(f"{name}: cannot read the file ({err.strerror}); check its permissions") from None


def _open_and_decode(file: BinaryIO, name: str) -> Image.Image:
    with _pil_errors_as_input_errors(name):
        image = Image.open(file)  # reads the header only
    return _decode(image, name)


def _decode(image: Image.Image, name: str) -> Image.Image:
    _check_pixel_count(image, name)
    with _pil_errors_as_input_errors(name):
        # Decode every pixel now, so truncated data fails here rather than later in preprocess.
        image.load()
        image = ImageOps.exif_transpose(image)  # phones store rotation in EXIF, not in the pixels
    return _to_rgb(image, name)


@contextlib.contextmanager
def _pil_errors_as_input_errors(name: str) -> Iterator[None]:
    """Turn what PIL raises on bad data, and its decompression-bomb warning, into one InputError."""
    try:
        # PIL checks sizes again while decoding some formats (GIF frames, ICO, TIFF tiles) and only
        # warns below twice its limit. (catch_warnings is process-wide; this filter only touches
        # that one warning class.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombWarning:
        raise _too_large(name, f"more than {Image.MAX_IMAGE_PIXELS:,}") from None
    except Image.DecompressionBombError:
        raise _too_large(name, f"more than {2 * Image.MAX_IMAGE_PIXELS:,}") from None
    except UnidentifiedImageError:
        raise InputError(
            f"{name}: not an image PIL can read (PNG, JPEG, WebP, ...); pass an image file"
        ) from None
    except _DECODE_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # keep the message on one line
        raise InputError(
            f"{name}: image data is truncated or corrupt ({reason}); re-save or re-download the image"
        ) from None


def _check_pixel_count(image: Image.Image, name: str) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_large(name, f"{width}x{height} = {width * height:,}")


def _too_large(name: str, found: str) -> InputError:
    return InputError(
        f"{name}: image too large: expected at most {MAX_IMAGE_PIXELS:,} pixels, found {found}; "
        "downscale it (4096 px on the long side is plenty) and try again"
    )


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    if image.mode in _INT_GRAY_MODES:
        return _int_gray_to_rgb(image)
    if image.mode == "F":
        return _float_gray_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_over_white(image)
    try:
        return image.convert("RGB")  # RGB (a copy), L, 1, P, CMYK, YCbCr, LAB, ...
    except ValueError:
        raise InputError(f"{name}: expected an RGB-convertible image, found pixel mode {image.mode!r}; "
                         "re-save it as PNG or JPEG") from None


def _int_gray_to_rgb(image: Image.Image) -> Image.Image:
    # 16-bit grayscale (PNG, TIFF). PIL's convert("RGB") clips values above 255 instead of scaling,
    # which turns most of the image white; map 0..65535 onto 0..255 (65535 / 257 = 255).
    values = np.asarray(image).astype(np.float64)  # (H, W)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _float_gray_to_rgb(image: Image.Image) -> Image.Image:
    # Float images have no fixed range. Float TIFFs and NumPy arrays use 0..1 for black..white;
    # otherwise follow PIL's own convention for mode F (0..255, like mode L).
    values = np.asarray(image).astype(np.float64)  # (H, W)
    if values.size and 0.0 <= values.min() and values.max() <= 1.0:
        values = values * 255.0
    gray = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _composite_over_white(image: Image.Image) -> Image.Image:
    # The model has no alpha channel. Transparent areas are flattened onto white, as a page shows them
    # and as Hugging Face's `convert_to_rgb` (used by CLIPImageProcessor) does; dropping alpha instead
    # would expose whatever colour the encoder left under transparent pixels, often black.
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's `expand2square`: pad the short side with `background`, the image pasted centred.

    (W, H) -> (S, S), S = max(W, H); the image's top-left corner lands at ((S-W)//2, (S-H)//2).
    """
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def preprocess(
    image: Image.Image, *, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """LLaVA-1.5's image pipeline: RGB image (W, H) -> float32 array (3, image_size, image_size).

    Pad to square with the mean colour, resize with PIL bicubic, scale to [0, 1], then (x - mean) / std
    per channel. `mean` and `std` are the mmproj's `clip.vision.image_mean/std` (3 values each).
    For a square image this equals CLIPImageProcessor(size=image_size, crop=image_size, bicubic).
    """
    if image.mode != "RGB":
        raise ValueError(f"preprocess expects an RGB image (see load_image), got mode {image.mode!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {len(mean)} and {len(std)}")
    # LLaVA truncates the mean colour to integers: int(m * 255), not round().
    square = expand_to_square(image, tuple(int(m * 255) for m in mean))  # (S, S)
    resized = square.resize((image_size, image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255)  # (image_size, image_size, 3) in [0, 1]
    normalised = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # (H, W, 3)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))  # (3, H, W)
