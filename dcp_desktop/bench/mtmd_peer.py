"""llama.cpp's own multimodal image encoder (libmtmd, through llama-cpp-python), as a peer to measure
against: the parity test compares its image embeddings with the Hugging Face reference, and the speed
benchmark times it beside our path on the same files.

It is never used to answer questions: its LLaVA graph differs from the reference (see README,
"Reference parity").
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ..llama_build import mtmd
from PIL import Image

from ..llama_context import LlamaContext


class MtmdEncoder:
    """An mtmd context on an mmproj, bound to a loaded LLM. Close it after use, or use `with`."""

    def __init__(self, mmproj_path: str | Path, llama: LlamaContext, *, n_threads: int = 1, use_gpu: bool = False):
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llama.model, params)
        if not self._ctx:
            raise RuntimeError(f"{mmproj_path}: llama.cpp's mtmd could not load this mmproj")
        self.n_embd = llama.n_embd
        self.marker = mtmd.mtmd_default_marker().decode()  # where a prompt's image goes

    def close(self) -> None:
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def encode(self, image: Image.Image) -> np.ndarray:
        """An RGB image → the (n_image_tokens, n_embd) embeddings llama.cpp would feed the LLM."""
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))  # (h, w, 3)
        bitmap = mtmd.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        try:
            images = [chunk for chunk in self.turn(self.marker, bitmap)
                      if isinstance(chunk, np.ndarray)]
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        if not images:
            raise RuntimeError("mtmd produced no image chunk")
        return images[0]

    def read_image(self, path: str | Path):
        """A bitmap of the image file, decoded by mtmd's own loader; free it with free_image."""
        bitmap = mtmd.mtmd_helper_bitmap_init_from_file(self._ctx, str(path).encode(), False)
        if not bitmap:
            raise RuntimeError(f"{path}: llama.cpp's mtmd could not read this image")
        return bitmap

    @staticmethod
    def free_image(bitmap) -> None:
        mtmd.mtmd_bitmap_free(bitmap)

    def turn(self, text: str, bitmap) -> Iterator[list[int] | np.ndarray]:
        """A prompt with one media marker, as mtmd cuts it: token ids for each text chunk and the
        (n_image_tokens, n_embd) embeddings for the image chunk, each made when it is reached. The
        time spent in this iterator is mtmd's: tokenizing (which preprocesses the image) and encoding."""
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            data = text.encode()
            entry = mtmd.mtmd_input_text(text=data, text_len=len(data), add_special=False, parse_special=True)
            if mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(entry), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1):
                raise RuntimeError("mtmd_tokenize failed")
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                yield self._chunk(mtmd.mtmd_input_chunks_get(chunks, i))
        finally:
            mtmd.mtmd_input_chunks_free(chunks)

    def _chunk(self, chunk) -> list[int] | np.ndarray:
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            n_tokens = ctypes.c_size_t()
            ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tokens))
            return list(ids[:n_tokens.value])
        if mtmd.mtmd_encode_chunk(self._ctx, chunk) != 0:
            raise RuntimeError("mtmd_encode_chunk failed")
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        embd = mtmd.mtmd_get_output_embd(self._ctx)
        return np.ctypeslib.as_array(embd, shape=(n_tokens * self.n_embd,)).reshape(n_tokens, self.n_embd).copy()
