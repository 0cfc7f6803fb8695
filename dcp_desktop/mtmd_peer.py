"""llama.cpp's own multimodal image encoder (libmtmd, through llama-cpp-python), as a peer to
measure against: the parity test compares its image embeddings with the Hugging Face reference,
and the speed benchmarks time it beside our path on the same files.

It is never used to answer questions: its LLaVA graph differs from the reference (see README,
"Reference parity").
"""

from __future__ import annotations

import ctypes

import numpy as np
from llama_cpp import Llama
from llama_cpp import mtmd_cpp as mtmd
from PIL import Image


class MtmdEncoder:
    """mtmd context on an mmproj, bound to a loaded llama-cpp-python `Llama`. Close it after use."""

    def __init__(self, mmproj_path: str, llm: Llama, *, n_threads: int = 1, use_gpu: bool = False):
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        self._ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), llm.model, params)
        if not self._ctx:
            raise RuntimeError(f"{mmproj_path}: llama.cpp's mtmd could not load this mmproj")
        self.n_embd = llm.n_embd()

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
        data = rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        bitmap = mtmd.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], data)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            marker = mtmd.mtmd_default_marker()
            text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            if mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            return self._encode_image_chunk(chunks)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def _encode_image_chunk(self, chunks) -> np.ndarray:
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            if mtmd.mtmd_encode_chunk(self._ctx, chunk) != 0:
                raise RuntimeError("mtmd_encode_chunk failed")
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            embd = mtmd.mtmd_get_output_embd(self._ctx)
            return np.ctypeslib.as_array(embd, shape=(n_tokens * self.n_embd,)).reshape(n_tokens, self.n_embd).copy()
        raise RuntimeError("mtmd produced no image chunk")
