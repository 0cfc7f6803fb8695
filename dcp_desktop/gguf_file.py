"""Reading GGUF files: the memory-mapped reader, metadata values, tensors, and the LLaVA mmproj facts.

One owner for what the project knows about the GGUF layout: `models.validate` checks a pair with it,
`vision` builds the PyTorch tower from it, `question` reads token rows, `export` checks what it wrote.
Every problem is an InputError naming the file, what was expected, what was found and what to do next.
Imports only `gguf` and numpy (no network client), so the vision path loads without huggingface_hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from .errors import InputError


# --- reading ---------------------------------------------------------------------------------------

class _Truncated(Exception):
    def __init__(self, needed: int):
        self.needed = needed


class _CheckedReader(GGUFReader):
    """GGUFReader that reports a file cut short as such, instead of failing somewhere in numpy.

    gguf 0.19 reads every header item and tensor through `_get`, slicing its memory map; past the end
    of the file the slice is silently short. Checking the end here catches a cut header, cut metadata
    and cut tensor data alike, with the number of bytes that were needed.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        end = offset + np.dtype(dtype).itemsize * int(count)
        if end > self.data.size:
            raise _Truncated(end)
        return super()._get(offset, dtype, count, override_order)


def open_gguf(path: Path | str, *, redownload: str | None = None) -> GGUFReader:
    """A memory-mapped reader for `path`; InputError if it is missing, not a GGUF, cut short or broken.

    `redownload`: the command that fetches the file again (e.g. "`dcp-chat pull llava-1.5-7b`"); a cut
    or corrupt file's message then says to delete it and run that, instead of "get a complete copy".
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); check the path") from error
    if magic != b"GGUF":
        found = f"starts with {magic!r}" if magic else "the file is empty"
        raise InputError(f"{path}: not a GGUF file ({found}, expected b'GGUF'); pass a .gguf model file")
    try:
        return _CheckedReader(path)
    except _Truncated as cut:
        size = path.stat().st_size
        raise InputError(
            f"{path}: truncated GGUF (expected at least {cut.needed} bytes, found {size}); "
            f"{_redownload_hint(path, redownload)}"
        ) from None
    except (ValueError, KeyError, IndexError) as error:  # what gguf raises on corrupt metadata
        raise InputError(f"{path}: unreadable GGUF ({error}); {_redownload_hint(path, redownload)}") from error


def _redownload_hint(path: Path, redownload: str | None) -> str:
    if redownload:
        # In the HF cache `path` is a link to a blob: delete the blob, or the download would reuse it.
        return f"delete {path.resolve()} and download again ({redownload})"
    return "get a complete copy of the file"


_REQUIRED = object()


def gguf_value(reader: GGUFReader, key: str | tuple[str, ...], default: Any = _REQUIRED) -> Any:
    """Metadata value `key` as a Python str, int, float, bool or list (for arrays).

    `key` may be a tuple of names for one setting, tried in order (files from different converters).
    A missing key returns `default`, or raises InputError naming the file when no default is given.
    """
    keys = (key,) if isinstance(key, str) else key
    for name in keys:
        field = reader.get_field(name)
        if field is not None:
            return field.contents()
    if default is not _REQUIRED:
        return default
    raise InputError(
        f"{reader.data.filename}: GGUF metadata key '{keys[0]}' is missing; the file is incomplete or "
        "comes from a converter dcp-chat does not support (use llama.cpp's LLaVA converter)"
    )


def tensor_array(tensor) -> np.ndarray:
    """A GGUF tensor as float32 in numpy layout (GGUF lists dims innermost first)."""
    data = dequantize(tensor.data, tensor.tensor_type)
    return np.array(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


# --- the LLaVA mmproj --------------------------------------------------------------------------------

# The projector type moved: one key for single-modality files, a per-modality key for mixed ones.
PROJECTOR_TYPE_KEYS = ("clip.projector_type", "clip.vision.projector_type")
LLAVA_PROJECTOR = "mlp"  # LLaVA-1.5's 2-layer MLP, as llama.cpp names it
LLAVA_TENSORS = ("mm.0.weight", "mm.2.weight")  # its two Linear layers (a GELU sits between them)


@dataclass(frozen=True)
class VisionConfig:
    """An mmproj's vision tower and projector, as llama.cpp's LLaVA converter writes them."""

    image_size: int  # 336
    patch_size: int  # 14
    width: int  # 1024 for ViT-L
    ff_width: int  # 4096 for ViT-L
    n_heads: int
    n_blocks: int  # stored blocks (23 for LLaVA-1.5 ViT-L)
    eps: float
    quick_gelu: bool  # CLIP's activation; exact GELU when the file says clip.use_gelu
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    proj_hidden: int  # mm.0 output width
    n_embd: int  # mm.2 output width = the LLM's n_embd

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size  # 24

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid  # 576


def read_vision(reader: GGUFReader, path: Path) -> VisionConfig:
    """The vision hyper-parameters and projector widths of the mmproj at `path`; InputError names the
    missing key or tensor. Checks nothing else: models.validate checks that the file is a LLaVA mmproj."""
    tensors = {t.name: t for t in reader.tensors}
    for name in LLAVA_TENSORS:
        if name not in tensors:
            raise InputError(f"{path}: LLaVA projector tensor '{name}' is missing; the mmproj is incomplete, "
                             "or this is not an mmproj (pass the vision projector with --mmproj)")
    return VisionConfig(
        image_size=int(gguf_value(reader, "clip.vision.image_size")),
        patch_size=int(gguf_value(reader, "clip.vision.patch_size")),
        width=int(gguf_value(reader, "clip.vision.embedding_length")),
        ff_width=int(gguf_value(reader, "clip.vision.feed_forward_length")),
        n_heads=int(gguf_value(reader, "clip.vision.attention.head_count")),
        n_blocks=int(gguf_value(reader, "clip.vision.block_count")),
        eps=float(gguf_value(reader, "clip.vision.attention.layer_norm_epsilon")),
        quick_gelu=not bool(gguf_value(reader, "clip.use_gelu", False)),
        image_mean=tuple(float(x) for x in gguf_value(reader, "clip.vision.image_mean")),
        image_std=tuple(float(x) for x in gguf_value(reader, "clip.vision.image_std")),
        # GGUF lists dimensions fastest-first (ne0 = inputs, ne1 = outputs), the reverse of numpy's
        # `tensor.data.shape`, which is a byte shape when quantised.
        proj_hidden=int(tensors["mm.0.weight"].shape[1]),
        n_embd=int(tensors["mm.2.weight"].shape[1]),
    )


def projector_type(reader: GGUFReader) -> str | None:
    """'mlp' for a LLaVA projector. Files converted before projector types existed (2023) only say
    clip.has_llava_projector; our PyTorch path runs them, though current llama.cpp mtmd refuses them."""
    projector = gguf_value(reader, PROJECTOR_TYPE_KEYS, None)
    if projector is None and gguf_value(reader, "clip.has_llava_projector", False):
        return LLAVA_PROJECTOR
    return projector
