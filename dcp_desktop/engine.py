"""Stage 5 and 6 (inject, generate): one LLaVA-1.5 conversation in llama.cpp.

The LLM never sees pixels or placeholder tokens: each image arrives as K rows of projected embeddings
(K × n_embd floats) decoded straight into the KV cache. Everything else is ordinary text in the
Vicuna-v1 template LLaVA-1.5 was trained with (template.py):

    <s>{SYSTEM} USER: [image rows]\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: ...

The system prefix is decoded once per model load and kept in the cache; `new_chat` drops only what
follows it. Follow-up questions append to the cache, so earlier images are never recomputed.

Positions: a pruned image keeps the RoPE geometry of the full one. Each of its K rows is decoded at the
position its grid patch has among all 576, and the text after it starts 576 positions after the image's
start, so the question sees every kept patch at the distance the model was trained with. The cache still
holds K cells. Upstream llama.cpp takes only consecutive positions; the project's build takes increasing
positions with gaps (native/llama.cpp-patches/0002). Positions count against the context like cells do
(the model knows no position past its training context), so an image whose full span no longer fits is
packed: K positions, as many as its cells.

Re-pruned follow-ups: a text-aware method may choose an image's K rows anew for a follow-up question
(pipeline.py, --follow-ups reprune). `replace_images` then drops the cache from the conversation's first
image on and decodes it again, new rows in place of the old ones and the same text after them: every
later token must see the rows the question now sees. The engine keeps a log of what it decoded after
the system prefix for that.

Mass: a kept row that stands for m_k patches gets ln m_k added to every attention logit toward it, in
every layer and head (patch 0001, a per-cell bias), when its ImageRows carry a bias. The bias is set once
the rows are in the cache, so the rows do not see each other's bias; every later token does. On the
demo model's validation split (400 questions, PyTorch engine, 2026-12-02) that scored like biasing the
rows' own pass too: dcp at 16 tokens 86.0% against 84.8%, within noise.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import template
from .errors import InputError
from .llama_context import LlamaContext


@dataclass(frozen=True)
class ImageRows:
    """One image as the LLM receives it: k projected rows and, for a pruned image, where they sit and
    how much attention each draws."""

    embeddings: np.ndarray  # (k, n_embd) float32
    grid_index: np.ndarray | None = None  # (k,) ascending: the grid patch each row stands for
    n_grid: int | None = None  # patches in the full grid (576): the positions the image spans
    bias: np.ndarray | None = None  # (k,) added to every attention logit toward each row (ln mass)

    @property
    def span(self) -> int:
        return len(self.embeddings) if self.grid_index is None else int(self.n_grid)


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy, the setting LLaVA-1.5 is evaluated with
    top_p: float = 0.95
    seed: int = 0


@dataclass
class _Decoded:
    """One stretch of the conversation in the cache, as `replace_images` replays it: text tokens, or one
    image's rows."""

    position: int  # where it starts
    n_past: int  # cells in the cache before it
    tokens: list[int] | None = None
    image: ImageRows | None = None
    room_after: int = 0  # an image's inject() argument


BACKENDS = ("llamacpp", "torch")  # the LLM in llama.cpp (the app), or in PyTorch (evaluation: torch_llama.py)


class Engine:
    """The one conversation in a llama.cpp context (or its PyTorch stand-in). Not thread-safe: use it
    from one thread at a time (the GUI runs it in a worker thread). Close it, or use `with`."""

    def __init__(self, llm_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_gpu_layers: int | None = None, verbose: bool = False, backend: str = "llamacpp"):
        if backend == "torch":
            from .torch_llama import TorchLlama  # imports transformers: only when asked for

            self.llama = TorchLlama(llm_path, n_ctx=n_ctx, n_threads=n_threads, verbose=verbose)
        elif backend == "llamacpp":
            self.llama = LlamaContext(llm_path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                      verbose=verbose)
        else:
            raise InputError(f"--engine: unknown '{backend}'; choose one of {', '.join(BACKENDS)}")
        self.n_embd, self.n_ctx = self.llama.n_embd, self.llama.n_ctx
        self._rng = np.random.default_rng(0)
        self._answered = False  # an answer is in the cache and still needs its closing </s>
        self.position = 0  # the position the next token takes (past a pruned image's unused positions)
        self.n_past = 0  # cells in the cache: text tokens + image rows, prefix included
        self.turn_images: list[tuple[int, int]] = []  # positions [p0, p1) of the images the last turn added
        self._log: list[_Decoded] = []  # what follows the system prefix (replace_images replays it)
        self.decode_tokens(template.system_ids(self.tokenize, self.llama.bos))
        self.n_prefix = self.n_past  # the cached system prefix
        self._log.clear()

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        self.llama.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- conversation ------------------------------------------------------------------------

    def new_chat(self) -> None:
        """Forget the conversation, keep the cached system prefix (a text-only prefix: cells and
        positions agree)."""
        self.llama.remove(self.n_prefix)
        self.n_past = self.position = self.n_prefix
        self._answered = False
        self._log.clear()

    def tokenize(self, text: str) -> list[int]:
        return self.llama.tokenize(text)

    def add_user_turn(self, question: str, images: list[ImageRows] = (), hooks=None) -> None:
        """Append `USER: [images]\\n{question} ASSISTANT:` to the cache. `hooks` (torch_llama.Hooks, PyTorch
        engine only): what the LLM does between its layers during this turn's decodes (in-LLM pruning)."""
        head = template.turn_head_ids(self.tokenize, self.llama.eos, after_answer=self._answered)
        tail = template.turn_tail_ids(self.tokenize, question, has_images=bool(images))
        self._check_room(len(head) + sum(len(image.embeddings) for image in images) + len(tail))
        self.turn_images = []
        with self._between_layers(hooks):
            self.decode_tokens(head)
            for i, image in enumerate(images):
                later = sum(len(other.embeddings) for other in images[i + 1:]) + len(tail) + 1  # + 1 answer token
                self.inject(image, room_after=later)
            self.decode_tokens(tail)
        self._answered = False

    def replace_images(self, images: list[ImageRows]) -> int:
        """Put `images` in place of the conversation's images, in order: the cache from the first image on
        is decoded again, with the same text after each image (see the module docstring). Returns how many
        cells it decoded."""
        starts = [i for i, part in enumerate(self._log) if part.image is not None]
        if len(images) != len(starts):
            raise ValueError(f"replace_images: the conversation holds {len(starts)} images, got {len(images)}")
        if not starts:
            return 0
        replay = self._log[starts[0]:]
        del self._log[starts[0]:]
        self.position, self.n_past = replay[0].position, replay[0].n_past
        new = iter(images)
        for part in replay:
            if part.image is None:
                self.decode_tokens(part.tokens)
            else:
                self.inject(next(new), room_after=part.room_after)
        return self.n_past - replay[0].n_past

    @contextmanager
    def _between_layers(self, hooks):
        """The LLM runs `hooks` between its layers inside this block (the PyTorch engine only)."""
        if hooks is None:
            yield
            return
        if not hasattr(self.llama, "hooks"):
            raise InputError("pruning inside the LLM needs the PyTorch engine (--engine torch)")
        before, self.llama.hooks = self.llama.hooks, hooks
        try:
            yield
        finally:
            self.llama.hooks = before

    def image_cells_per_layer(self) -> list[int] | None:
        """How many cells of the last turn's images each LLM layer holds (None on llama.cpp, whose layers
        all hold the same cells)."""
        counts = [self.llama.cells_per_layer(p0, p1) for p0, p1 in self.turn_images]
        if not counts or counts[0] is None:
            return None
        return [sum(layer) for layer in zip(*counts)]

    def generate(self, params: GenerationParams = GenerationParams()) -> Iterator[str]:
        """Stream the assistant's answer as text pieces. Stops at </s> or max_tokens; the caller may
        stop iterating at any time (every piece already yielded is in the cache)."""
        self._rng = np.random.default_rng(params.seed)
        self._answered = True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = True
        for _ in range(min(params.max_tokens, self.n_ctx - self.position)):
            token = self._sample(params)
            if token == self.llama.eos:
                break
            self.decode_tokens([token])
            text = decoder.decode(self.llama.piece(token))
            if first and text:  # the first piece carries SentencePiece's word-start space
                text, first = text.lstrip(" "), False
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    # --- what the cache holds ------------------------------------------------------------------

    def inject(self, image: ImageRows, room_after: int = 0) -> None:
        """Decode an image's k rows: at the next k positions, or, with a grid index, at their patches'
        positions in the full image when its span and room_after more positions still fit in the
        context (see the module docstring)."""
        rows = np.ascontiguousarray(image.embeddings, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ValueError(f"image embeddings: expected (k, {self.n_embd}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("image embeddings contain NaN or Inf")
        self._check_room(len(rows))
        start = self.position
        fits = start + image.span + room_after <= self.n_ctx
        if image.grid_index is not None and self.llama.takes_gaps and fits:
            offsets, span = np.asarray(image.grid_index), image.span
        else:
            offsets, span = np.arange(len(rows)), len(rows)
        self.llama.remove(start)  # stale cells of an interrupted decode
        for chunk in range(0, len(rows), self.llama.n_batch):
            part = slice(chunk, chunk + self.llama.n_batch)
            self.llama.decode(start + offsets[part], rows=rows[part])
        if image.bias is not None:  # once the rows are cells (see the module docstring)
            for position, bias in zip(start + offsets, image.bias):
                self.llama.set_bias(int(position), int(position) + 1, float(bias))
        self._log.append(_Decoded(start, self.n_past, image=image, room_after=room_after))
        self.n_past += len(rows)
        self.position = start + span
        self.turn_images.append((start, self.position))

    def decode_tokens(self, tokens: list[int]) -> None:
        """Decode text tokens at the next positions."""
        if len(tokens):
            self._decode(np.asarray(tokens, dtype=np.int32))

    def next_token_logits(self) -> np.ndarray:
        """Logits for the token after the last decoded position, (n_vocab,) float32 (a copy)."""
        return self.llama.logits()

    def kv_positions(self) -> int:
        """How many positions the conversation spans in llama.cpp's KV cache, asked of llama.cpp itself
        (more than it holds cells when a pruned image left positions unused)."""
        lo, hi = self.llama.position_range()
        return 0 if hi < 0 else hi - lo + 1

    def image_state_bytes(self, image: ImageRows) -> int:
        """How much the cache's saved state grows when `image` is injected into a new chat: llama.cpp's
        own count of the image's keys and values (plus a few bytes of cell metadata per row)."""
        self.new_chat()
        before = self.llama.state_bytes()
        self.inject(image)
        grown = self.llama.state_bytes() - before
        self.new_chat()
        return grown

    # --- the llama.cpp calls -----------------------------------------------------------------

    def _decode(self, tokens: np.ndarray) -> None:
        """Decode token ids from self.position on, n_batch at a time."""
        self.llama.remove(self.position)  # stale cells of an interrupted decode
        decoded = _Decoded(self.position, self.n_past, tokens=[int(t) for t in tokens])
        for start in range(0, len(tokens), self.llama.n_batch):
            chunk = tokens[start:start + self.llama.n_batch]
            self.llama.decode(np.arange(self.position, self.position + len(chunk)), tokens=chunk)
            self.position += len(chunk)
            self.n_past += len(chunk)
        last = self._log[-1] if self._log else None
        if last is not None and last.tokens is not None and last.position + len(last.tokens) == decoded.position:
            last.tokens += decoded.tokens  # one stretch: an answer's tokens come one at a time
        else:
            self._log.append(decoded)

    def _check_room(self, n_new: int) -> None:
        """n_new more positions (one per cell, packed) must fit in the context."""
        if self.position + n_new > self.n_ctx:
            raise InputError(f"the conversation needs {self.position + n_new} positions but the context holds "
                             f"{self.n_ctx}; start a new chat or use fewer image tokens (--tokens)")

    def _sample(self, params: GenerationParams) -> int:
        logits = self.next_token_logits()
        if params.temperature <= 0:
            return int(np.argmax(logits))
        probs = np.exp((logits - logits.max()) / params.temperature)
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]  # nucleus
        return int(self._rng.choice(keep, p=probs[keep] / probs[keep].sum()))
