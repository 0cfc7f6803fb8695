"""Stage 5 and 6 (inject, generate): one LLaVA-1.5 conversation in llama.cpp.

The LLM never sees pixels or placeholder tokens: each image arrives as K rows of projected embeddings
(K × n_embd floats) decoded straight into the KV cache through `llama_batch.embd`. Everything else
is ordinary text in the Vicuna-v1 template LLaVA-1.5 was trained with:

    <s>{SYSTEM} USER: [image rows]\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: ...

The system prefix is decoded once per model load and kept in the cache; `new_chat` drops only what
follows it. Follow-up questions append to the cache, so earlier images are never recomputed.
`Llama.n_tokens`/`input_ids` stay in step with the cache (image rows are recorded as IMAGE_TOKEN).
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
        self._rng = np.random.default_rng(0)
        self._answered = False  # an answer is in the cache and still needs its closing </s>
        self.llm.reset()
        self.llm.eval(self.tokenize(SYSTEM, bos=True))
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

    def add_user_turn(self, question: str, images: list[np.ndarray] = ()) -> None:
        """Append `USER: [images]\\n{question} ASSISTANT:` to the cache (images: (k, n_embd) each)."""
        head = ([self.eos] if self._answered else []) + self.tokenize("USER:")
        tail = self.tokenize(("\n" if images else " ") + question + " ASSISTANT:")
        needed = len(head) + sum(len(e) for e in images) + len(tail)
        self._check_room(needed)
        self._eval_text(head)
        for embeddings in images:
            self.inject(embeddings)
        self._eval_text(tail)
        self._answered = False

    def generate(self, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        """Stream the assistant's answer as text pieces. Stops at </s> or max_tokens; the caller may
        stop iterating at any time (every piece already yielded is in the cache)."""
        self._rng = np.random.default_rng(params.seed)
        self._answered = True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = True
        for _ in range(min(params.max_tokens, self.n_ctx - self.n_past)):
            token = self._sample(params)
            if token == self.eos:
                break
            self._eval_text([token])
            text = decoder.decode(self.llm.detokenize([token]))
            if first and text:  # the first piece carries SentencePiece's word-start space
                text, first = text.lstrip(" "), False
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    # --- the llama.cpp calls -----------------------------------------------------------------

    def inject(self, embeddings: np.ndarray) -> None:
        """Decode k rows of image embeddings at the next k positions of sequence 0."""
        rows = np.ascontiguousarray(embeddings, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ValueError(f"image embeddings: expected (k, {self.n_embd}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("image embeddings contain NaN or Inf")
        self._check_room(len(rows))
        self.llm._ctx.kv_cache_seq_rm(-1, self.n_past, -1)
        for start in range(0, len(rows), self.llm.n_batch):
            self._decode_embeddings(rows[start:start + self.llm.n_batch])

    def _decode_embeddings(self, rows: np.ndarray) -> None:
        n, n_past = len(rows), self.n_past
        batch = llama_cpp.llama_batch_init(n, self.n_embd, 1)
        try:
            ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
            for i in range(n):
                batch.pos[i] = n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            status = llama_cpp.llama_decode(self.llm._ctx.ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode failed on {n} image embeddings (status {status})")
        finally:
            llama_cpp.llama_batch_free(batch)
        self.llm.input_ids[n_past:n_past + n] = IMAGE_TOKEN
        self.llm.n_tokens += n

    def _eval_text(self, tokens: list[int]) -> None:
        if tokens:
            self.llm.eval(tokens)

    def _truncate(self, n_keep: int) -> None:
        self.llm._ctx.kv_cache_seq_rm(-1, n_keep, -1)
        self.llm.n_tokens = n_keep

    def _check_room(self, n_new: int) -> None:
        if self.n_past + n_new > self.n_ctx:
            raise InputError(f"the conversation needs {self.n_past + n_new} tokens but the context holds "
                             f"{self.n_ctx}; start a new chat or use fewer image tokens (--tokens)")

    def next_token_logits(self) -> np.ndarray:
        """Logits for the token after the last decoded position, (n_vocab,) float32 (a copy)."""
        n_vocab = self.llm.n_vocab()
        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(n_vocab,)).copy()

    def kv_positions(self) -> int:
        """How many positions sequence 0 holds in llama.cpp's KV cache (asked of llama.cpp itself)."""
        memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        lo = llama_cpp.llama_memory_seq_pos_min(memory, 0)
        hi = llama_cpp.llama_memory_seq_pos_max(memory, 0)
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
