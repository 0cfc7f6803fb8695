"""The question's token embeddings, for text-aware pruning (cdpruner, tatcs, dcp).

They are rows of the LLM GGUF's `token_embd.weight`, read with the `gguf` package from the
memory-mapped file: only the rows of the question's tokens are dequantised (any type `gguf`
supports: f32, f16, bf16, q8_0, q4_K, ...), never the whole matrix, and rows are cached per model.
No second model and no llama.cpp context are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from .errors import InputError
from .gguf_file import open_gguf


class TokenEmbeddings:
    """Rows of one LLM's token embedding matrix, (n_vocab, n_embd) in numpy terms."""

    def __init__(self, llm_path: str | Path):
        """Opens the GGUF (memory-mapped; parsing its metadata takes ~0.1 s for a 32k vocabulary)."""
        self.path = Path(llm_path)
        reader: GGUFReader = open_gguf(self.path)
        found = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not found:
            raise InputError(f"{self.path}: no token_embd.weight tensor; is this an LLM GGUF?")
        self._tensor = found[0]
        self.shape = int(self._tensor.shape[1]), int(self._tensor.shape[0])  # (n_vocab, n_embd)
        self._cache: dict[int, np.ndarray] = {}  # token id → (n_embd,) float32

    def rows(self, token_ids: list[int]) -> np.ndarray:
        """(len(token_ids), n_embd) float32 embeddings; dequantises only rows not seen before."""
        tensor = self._tensor
        n_vocab, n_embd = self.shape
        missing = sorted({t for t in token_ids if t not in self._cache})
        if any(not 0 <= t < n_vocab for t in missing):
            raise ValueError(f"token ids outside the vocabulary 0..{n_vocab - 1}: {missing}")
        if missing:
            raw = tensor.data[missing]  # (m, bytes or values per row): quantised blocks stay whole per row
            values = dequantize(np.asarray(raw), tensor.tensor_type).reshape(len(missing), n_embd)
            for token, row in zip(missing, values.astype(np.float32)):
                self._cache[token] = row
        if not token_ids:
            return np.zeros((0, n_embd), np.float32)
        return np.stack([self._cache[t] for t in token_ids])  # (T, n_embd)
