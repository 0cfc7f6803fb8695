"""Stage 5 and 6 (inject, generate): one LLaVA-1.5 conversation in llama.cpp.

The LLM never sees pixels or placeholder tokens: each image arrives as K rows of projected embeddings
(K × n_embd floats) decoded straight into the KV cache through `llama_batch.embd`. Everything else
is ordinary text in the Vicuna-v1 template LLaVA-1.5 was trained with:

    <s>{SYSTEM} USER: [image rows]\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: ...

The system prefix is decoded once per model load and kept in the cache; `new_chat` drops only what
follows it. Follow-up questions append to the cache, so earlier images are never recomputed.
`Llama.n_tokens`/`input_ids` count the cache's cells (image rows are recorded as IMAGE_TOKEN).

Positions: a pruned image keeps the RoPE geometry of the full one. Each of its K rows sits at the
position its grid patch has among all 576, and the text after it starts 576 positions after the
image's start, so the question sees every kept patch at the distance the model was trained with
(demo model, test split: +4.0 points of retention for dcp at 16 tokens, +8.3 at 192, over packing). The
cache still holds K cells. llama.cpp accepts only consecutive positions, so the rows are decoded
packed and then moved to their places (`llama_memory_seq_add`, a K-shift), and the first token after
the image is decoded at the end of the cache and moved across the gap. Positions count against the
context like cells do (the model knows no position past its training context), so an image whose
full span no longer fits is packed: K positions, as many as its cells.
"""

from __future__ import annotations

import codecs
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass

import llama_cpp
import numpy as np

from .errors import InputError

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
IMAGE_TOKEN = -1  # what input_ids records at an image row: never equal to a real token id


@dataclass(frozen=True)
class ImageRows:
    """One image as the LLM receives it: k projected rows and, for a pruned image, where they sit."""

    embeddings: np.ndarray  # (k, n_embd) float32
    grid_index: np.ndarray | None = None  # (k,) ascending: the grid patch each row stands for
    n_grid: int | None = None  # patches in the full grid (576): the positions the image spans

    @property
    def span(self) -> int:
        return len(self.embeddings) if self.grid_index is None else int(self.n_grid)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, the setting LLaVA-1.5 is evaluated with
    top_p: float = 0.95
    seed: int = 0


class Engine:
    """Owns a llama.cpp model + context and the one conversation in it. Not thread-safe: use it
    from one thread at a time (the GUI runs it in a worker thread). Close it, or use `with`."""

    def __init__(self, llm_path: str, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int = 0, verbose: bool = False):
        self.llm = llama_cpp.Llama(model_path=str(llm_path), n_ctx=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers, verbose=verbose)
        self.n_embd = self.llm.n_embd()
        # llama.cpp may round the context up; Llama's input_ids keeps the size asked for.
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self.eos = self.llm.token_eos()
        self._memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        self.can_move_rows = bool(llama_cpp.llama_memory_can_shift(self._memory))
        self._rng = np.random.default_rng(0)
        self._answered = False  # an answer is in the cache and still needs its closing </s>
        self.position = 0  # the position the next token takes (past a pruned image's unused positions)
        self.llm.reset()
        self.decode_tokens(self.tokenize(SYSTEM, bos=True))
        self.n_prefix = self.llm.n_tokens  # the cached system prefix

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- conversation ------------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        """Tokens (text tokens + image rows) in the conversation, prefix included."""
        return self.llm.n_tokens

    def new_chat(self) -> None:
        """Forget the conversation, keep the cached system prefix."""
        self._truncate(self.n_prefix)
        self._answered = False

    def tokenize(self, text: str, *, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False)

    def add_user_turn(self, question: str, images: list[ImageRows] = ()) -> None:
        """Append `USER: [images]\\n{question} ASSISTANT:` to the cache."""
        head = ([self.eos] if self._answered else []) + self.tokenize("USER:")
        tail = self.tokenize(("\n" if images else " ") + question + " ASSISTANT:")
        needed = len(head) + sum(len(image.embeddings) for image in images) + len(tail)
        self._check_room(needed)
        self.decode_tokens(head)
        for i, image in enumerate(images):
            later = sum(len(other.embeddings) for other in images[i + 1:]) + len(tail) + 1  # + 1 answer token
            self.inject(image, room_after=later)
        self.decode_tokens(tail)
        self._answered = False

    def generate(self, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        """Stream the assistant's answer as text pieces. Stops at </s> or max_tokens; the caller may
        stop iterating at any time (every piece already yielded is in the cache)."""
        self._rng = np.random.default_rng(params.seed)
        self._answered = True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = True
        for _ in range(min(params.max_tokens, self.n_ctx - self.position)):
            token = self._sample(params)
            if token == self.eos:
                break
            self.decode_tokens([token])
            text = decoder.decode(self.llm.detokenize([token]))
            if first and text:  # the first piece carries SentencePiece's word-start space
                text, first = text.lstrip(" "), False
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    # --- the llama.cpp calls -----------------------------------------------------------------

    def inject(self, image: ImageRows, room_after: int = 0) -> None:
        """Decode an image's k rows into sequence 0: at the next k positions, or, with a grid index,
        at their patches' positions in the full image when its span and room_after more positions
        still fit in the context (see the module docstring)."""
        rows = np.ascontiguousarray(image.embeddings, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ValueError(f"image embeddings: expected (k, {self.n_embd}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("image embeddings contain NaN or Inf")
        self._check_room(len(rows))
        start = self.position
        self._decode(rows, rows=True)
        fits = start + image.span + room_after <= self.n_ctx
        if image.grid_index is not None and self.can_move_rows and fits:
            self._move_rows(start, np.asarray(image.grid_index))
            self.position = start + image.span

    def decode_tokens(self, tokens: list[int]) -> None:
        """Decode text tokens into sequence 0 at the next positions."""
        if tokens:
            self._decode(np.asarray(tokens, dtype=np.int32), rows=False)

    def _move_rows(self, start: int, grid_index: np.ndarray) -> None:
        """Rows decoded at start, start+1, … → start + grid_index[j]; the last first, so no two meet."""
        for j in reversed(range(len(grid_index))):
            if grid_index[j] != j:
                llama_cpp.llama_memory_seq_add(self._memory, 0, start + j, start + j + 1, int(grid_index[j]) - j)

    def _decode(self, items: np.ndarray, *, rows: bool) -> None:
        """Decode items (token ids, or embedding rows) from self.position on, n_batch at a time.
        After a pruned image the cache ends before self.position; llama.cpp takes no gaps, so the
        first item goes at the cache's end and is then moved to self.position."""
        llama_cpp.llama_memory_seq_rm(self._memory, -1, self.position, -1)  # stale cells of an interrupted decode
        done = 0
        end = llama_cpp.llama_memory_seq_pos_max(self._memory, 0) + 1
        if end < self.position:
            self._decode_batch(items[:1], end, rows=rows)
            llama_cpp.llama_memory_seq_add(self._memory, 0, end, end + 1, self.position - end)
            self.position, done = self.position + 1, 1
        for start in range(done, len(items), self.llm.n_batch):
            chunk = items[start:start + self.llm.n_batch]
            self._decode_batch(chunk, self.position, rows=rows)
            self.position += len(chunk)

    def _decode_batch(self, items: np.ndarray, first_position: int, *, rows: bool) -> None:
        """One llama_decode of items at first_position, first_position + 1, …; logits for the last."""
        n, n_past = len(items), self.n_past
        batch = llama_cpp.llama_batch_init(n, self.n_embd if rows else 0, 1)
        try:
            if rows:
                ctypes.memmove(batch.embd, items.ctypes.data, items.nbytes)
            for i in range(n):
                if not rows:
                    batch.token[i] = int(items[i])
                batch.pos[i] = first_position + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            status = llama_cpp.llama_decode(self.llm._ctx.ctx, batch)
            if status != 0:
                what = "image embeddings" if rows else "tokens"
                raise RuntimeError(f"llama_decode failed on {n} {what} at position {first_position} (status {status})")
        finally:
            llama_cpp.llama_batch_free(batch)
        self.llm.input_ids[n_past:n_past + n] = IMAGE_TOKEN if rows else items
        self.llm.n_tokens += n

    def _truncate(self, n_keep: int) -> None:
        """Keep the first n_keep cells (a text-only prefix: cells and positions agree)."""
        llama_cpp.llama_memory_seq_rm(self._memory, -1, n_keep, -1)
        self.llm.n_tokens = self.position = n_keep

    def _check_room(self, n_new: int) -> None:
        """n_new more positions (one per cell, packed) must fit in the context."""
        if self.position + n_new > self.n_ctx:
            raise InputError(f"the conversation needs {self.position + n_new} positions but the context holds "
                             f"{self.n_ctx}; start a new chat or use fewer image tokens (--tokens)")

    def next_token_logits(self) -> np.ndarray:
        """Logits for the token after the last decoded position, (n_vocab,) float32 (a copy)."""
        n_vocab = self.llm.n_vocab()
        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy()

    def kv_positions(self) -> int:
        """How many positions sequence 0 spans in llama.cpp's KV cache, asked of llama.cpp itself
        (more than it holds cells when a pruned image left positions unused)."""
        lo = llama_cpp.llama_memory_seq_pos_min(self._memory, 0)
        hi = llama_cpp.llama_memory_seq_pos_max(self._memory, 0)
        return 0 if hi < 0 else hi - lo + 1

    def _sample(self, params: GenerationParams) -> int:
        logits = self.next_token_logits()
        if params.temperature <= 0:
            return int(np.argmax(logits))
        probs = np.exp((logits - logits.max()) / params.temperature)
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]  # nucleus
        return int(self._rng.choice(keep, p=probs[keep] / probs[keep].sum()))
