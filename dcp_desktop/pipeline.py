"""The whole data flow for one model, in order: image → vision → prune → project → inject → generate.

`Pipeline` is what the front ends (CLI, GUI, eval) hold: it validates the two GGUF files, loads the
vision tower (PyTorch) and the LLM (llama.cpp) once, turns each image into K projected embeddings,
and streams answers. Every stage is timed, so `dcp-chat --json` can say where the time went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Engine, GenerationParams
from .errors import InputError
from .image import load_image, preprocess
from .models import ModelFiles, ModelInfo, validate
from .prune import METHODS, Selection, select
from .vision import VisionTower

DEFAULT_METHOD = "fastervlm"  # the strongest selector available until DCP-Prune lands
DEFAULT_TOKENS = 16


@dataclass(frozen=True)
class PipelineOptions:
    method: str = DEFAULT_METHOD
    n_keep: int = DEFAULT_TOKENS  # image tokens the LLM sees; ignored by "full"
    seed: int = 0  # for the "random" method
    n_ctx: int = 4096  # capped at the model's training context
    n_threads: int | None = None  # None: llama.cpp's and PyTorch's defaults
    n_gpu_layers: int = 0
    device: str = "cpu"  # the vision tower's torch device: cpu, cuda, mps
    verbose: bool = False


@dataclass
class ImageTokens:
    """One image as the LLM will see it."""

    embeddings: np.ndarray  # (K, n_embd) float32
    selection: Selection  # which patches were kept (indices in the 24×24 grid), their masses, κ
    n_full: int  # patches before pruning (576)
    timings_ms: dict[str, float] = field(default_factory=dict)  # vision, prune, project


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


def check_method(method: str, n_keep: int, n_patches: int) -> int:
    """The number of image tokens for `method`; InputError for an unknown method or K out of range."""
    if method not in METHODS:
        raise InputError(f"--method: unknown '{method}'; choose one of {', '.join(METHODS)}")
    if method == "full":
        return n_patches
    if not 1 <= n_keep <= n_patches:
        raise InputError(f"--tokens: expected 1..{n_patches} image tokens, got {n_keep}")
    return n_keep


class Pipeline:
    """A loaded model and one conversation. Close it (or use `with`) to free llama.cpp's memory."""

    def __init__(self, files: ModelFiles, options: PipelineOptions = PipelineOptions()):
        self.options = options
        self.load_ms: dict[str, float] = {}
        self.turn: dict[str, float | None] = {}  # the last ask(): see ask()
        with _timed(self.load_ms, "load"):
            self.info: ModelInfo = validate(files)  # cheap metadata checks before anything loads
            self.n_keep = check_method(options.method, options.n_keep, self._n_patches())
            if options.n_threads:
                torch.set_num_threads(options.n_threads)
            self.vision = VisionTower.from_gguf(files.mmproj, device=options.device)
            self.engine = Engine(str(files.llm), n_ctx=min(options.n_ctx, self.info.n_ctx_train),
                                 n_threads=options.n_threads, n_gpu_layers=options.n_gpu_layers,
                                 verbose=options.verbose)

    def _n_patches(self) -> int:
        side = self.info.vision["image_size"] // self.info.vision["patch_size"]
        return side * side

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def encode_image(self, source) -> ImageTokens:
        """An image (path, bytes or PIL image) → K projected embeddings, timed per stage."""
        cfg, timings = self.vision.cfg, {}
        image = load_image(source)
        with _timed(timings, "vision"):
            pixels = preprocess(image, image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std)
            state = self.vision.encode(pixels)
            features = state.patches.float().cpu().numpy()  # (576, width)
            cls_attn = state.cls_attn.float().cpu().numpy()  # (576,)
        with _timed(timings, "prune"):
            selection = select(features, cls_attn, n_keep=self.n_keep, method=self.options.method,
                               grid=(cfg.grid, cfg.grid), seed=self.options.seed)
        with _timed(timings, "project"):
            embeddings = self.vision.project(selection.features)  # (K, n_embd)
        return ImageTokens(embeddings, selection, cfg.n_patches, timings)

    def ask(self, question: str, images: list[ImageTokens] = (),
            params: GenerationParams = GenerationParams()) -> Iterator[str]:
        """Stream the answer to `question` about `images` (added to the conversation first).
        When the stream ends, `self.turn` holds the turn's timings (ms) and token counts."""
        if not question.strip():
            raise InputError("question: empty; ask something about the image")
        turn = self.turn = {"prefill": 0.0, "first_token": None, "decode_tokens": 0, "decode": 0.0}
        start = time.perf_counter()
        with _timed(turn, "prefill"):
            self.engine.add_user_turn(question, [image.embeddings for image in images])
        n_before = self.engine.n_past
        for piece in self.engine.generate(params):
            if turn["first_token"] is None:
                turn["first_token"] = (time.perf_counter() - start) * 1000.0
            yield piece
        turn["total"] = (time.perf_counter() - start) * 1000.0
        turn["decode_tokens"] = self.engine.n_past - n_before  # tokens sampled and decoded
        if turn["first_token"] is not None:
            turn["decode"] = turn["total"] - turn["first_token"]

    def new_chat(self) -> None:
        self.engine.new_chat()
