"""The llama.cpp model and context: the one owner of both native handles.

A thin layer over llama-cpp-python's low-level C API (ctypes), like its own `_internals.py`: load the
model, make one context, decode a batch of token ids or embedding rows at the positions given, read the
last logits, tokenize, and edit sequence 0's memory. Conversation logic lives in engine.py; nothing else
in the package calls llama.cpp's context functions. Not thread-safe. Close it, or use `with`.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from . import llama_build
from .errors import InputError
from .llama_build import llama_cpp

llama_cpp.llama_backend_init()


ALL_LAYERS = 2**31 - 1  # llama.cpp caps n_gpu_layers at the model's layer count


def gpu_layers(requested: int | None) -> int:
    """LLM layers to offload: as requested, or, when None, all of them if llama.cpp has a GPU backend."""
    if requested is not None:
        return ALL_LAYERS if requested < 0 else requested
    return ALL_LAYERS if llama_cpp.llama_supports_gpu_offload() else 0


class LlamaVocab:
    """A model file's vocabulary alone (no weights, no context): tokenize and detokenize."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int | None = 0, verbose: bool = False,
                 vocab_only: bool = True):
        llama_build.set_verbose(verbose)
        self.model = None
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers(n_gpu_layers)
        params.vocab_only = vocab_only
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise InputError(f"{path}: llama.cpp could not load this model (run with --verbose to see why)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bos = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def close(self) -> None:
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        """Token ids of `text` (special tokens are not parsed: a user cannot type `</s>`)."""
        data = text.encode("utf-8")
        capacity = len(data) + 2
        ids = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), ids, capacity, bos, False)
        if n < 0:  # never for SentencePiece (at most one token per byte), but the API allows it
            raise RuntimeError(f"llama_tokenize needs {-n} tokens for {len(data)} bytes")
        return list(ids[:n])

    def piece(self, token: int) -> bytes:
        """The bytes token `token` stands for (a part of a UTF-8 character for byte tokens)."""
        buffer = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:n]


class LlamaContext(LlamaVocab):
    """One model file, one context, sequence 0. Attributes are read-only facts of the loaded model."""

    flops = None  # llama.cpp does not count its work (torch_llama.TorchLlama does)

    def __init__(self, path: str | Path, *, n_ctx: int, n_batch: int = 512, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, verbose: bool = False):
        self.ctx = None
        super().__init__(path, n_gpu_layers=n_gpu_layers, verbose=verbose, vocab_only=False)
        cores = os.cpu_count() or 1
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = min(n_ctx, n_batch)
        params.n_threads = n_threads or max(cores // 2, 1)  # decoding one token is memory-bound
        params.n_threads_batch = n_threads or cores
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            self.close()
            raise InputError(f"{path}: llama.cpp could not make a context of {n_ctx} tokens; try a smaller one")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = min(n_ctx, llama_cpp.llama_n_ctx(self.ctx))  # llama.cpp may round the context up
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.takes_gaps = llama_build.has_attention_bias()  # our build's patches come together (0001, 0002)

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        self.ctx = None
        super().close()

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, positions: np.ndarray, *, tokens: np.ndarray | None = None,
               rows: np.ndarray | None = None) -> None:
        """One llama_decode into sequence 0: token ids (n,) or embedding rows (n, n_embd) float32, at
        `positions` (n,), increasing (gaps allowed: patch 0002); logits are kept for the last item only. At
        most n_batch items."""
        n = len(positions)
        batch = llama_cpp.llama_batch_init(n, self.n_embd if rows is not None else 0, 1)
        try:
            if rows is not None:
                rows = np.ascontiguousarray(rows, dtype=np.float32)
                ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            for i in range(n):
                if tokens is not None:
                    batch.token[i] = int(tokens[i])
                batch.pos[i] = int(positions[i])
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            status = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if status != 0:
            what = "embedding rows" if rows is not None else "tokens"
            raise RuntimeError(f"llama_decode failed on {n} {what} at position {int(positions[0])} (status {status})")

    def logits(self) -> np.ndarray:
        """(n_vocab,) float32 logits of the last decoded item (a copy)."""
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    # --- sequence 0's memory -------------------------------------------------------------------

    def remove(self, p0: int, p1: int = -1) -> None:
        """Forget the cells at positions [p0, p1) (p1 = -1: to the end)."""
        llama_cpp.llama_memory_seq_rm(self.memory, 0, p0, p1)

    def set_bias(self, p0: int, p1: int, bias: float) -> None:
        """The attention bias of the cells at positions [p0, p1): added to every logit toward them (patch 0001)."""
        if not llama_build.has_attention_bias():
            raise InputError("an attention bias per image row (--mass-bias on) needs dcp-desktop's own llama.cpp "
                             f"build, but {llama_build.LIB_DIR} has none; unset LLAMA_CPP_LIB_PATH or use --mass-bias off")
        llama_build.seq_set_bias(self.memory, 0, p0, p1, bias)

    def position_range(self) -> tuple[int, int]:
        """(lowest, highest) position in sequence 0; (-1, -1) when it is empty."""
        return (llama_cpp.llama_memory_seq_pos_min(self.memory, 0),
                llama_cpp.llama_memory_seq_pos_max(self.memory, 0))

    def cells_per_layer(self, p0: int, p1: int) -> None:
        """None: llama.cpp's layers all hold the same cells, and it does not say how many per range."""
        return None

    def state_bytes(self) -> int:
        """Size of sequence 0's saved state: its cells' keys and values plus a little metadata."""
        return llama_cpp.llama_state_seq_get_size(self.ctx, 0)
