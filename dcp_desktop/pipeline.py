"""The whole data flow for one model, in order: image → vision → prune → project → inject → generate.

`Pipeline` is what the front ends (CLI, GUI, eval) hold: it validates the two GGUF files, loads the
vision tower (PyTorch) and the LLM (llama.cpp) once, and then
  - `encode_image`: image → CLIP features (with in-encoder ACGR when `acgr_layer` is set: the
    blocks after that layer run on CLS + M anchor tokens only);
  - `ask`: prunes each new image to K tokens *with the question* (text-aware methods need it),
    projects the K tokens, injects them, and streams the answer. Images already in the
    conversation are not pruned or sent again: follow-up questions reuse the cache. With
    `follow_ups="reprune"` a text-aware method chooses each earlier image's tokens again for every
    follow-up, from the image's vision features kept for the chat, and the engine re-decodes the
    conversation from the first image on (engine.replace_images).
Every stage is timed, so `dcp-chat --json` can say where the time went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Engine, GenerationParams, ImageRows
from .errors import InputError
from .gguf_file import VisionConfig
from .image import load_image, preprocess
from .inllm import METHODS as INLLM_METHODS
from .inllm import make_pruner
from .models import ModelFiles, ModelInfo, validate
from .prune import METHODS, Selection, check_n_keep, reads_question, select
from .question import TokenEmbeddings
from .project import Projector
from .vision import EncoderState, VisionTower, pick_device, pick_dtype

DEFAULT_METHOD = "dcp"
DEFAULT_TOKENS = 16
POSITIONS = ("grid", "packed")  # where kept image rows sit in the LLM's sequence (see engine.py)
FOLLOW_UPS = ("keep", "reprune")  # a follow-up question sees the first question's tokens, or its own
ANCHORS_PER_TOKEN = 4  # in-encoder ACGR keeps M = 4·K anchors by default (M > K: the final pruning still chooses)


@dataclass(frozen=True)
class PipelineOptions:
    method: str = DEFAULT_METHOD
    n_keep: int = DEFAULT_TOKENS  # image tokens the LLM sees; ignored by "full"
    acgr_layer: int | None = None  # prune inside the encoder after this many blocks (None: at the output)
    acgr_anchors: int | None = None  # M tokens kept inside the encoder (None: 4·K)
    prune_options: dict = field(default_factory=dict)  # knobs of the methods (prune.DEFAULT_OPTIONS)
    inllm_options: dict = field(default_factory=dict)  # knobs of the in-LLM methods (inllm.KNOBS)
    seed: int = 0  # for the "random" method
    positions: str = "grid"  # kept rows sit at their patches' RoPE positions; "packed": one after another
    follow_ups: str = "keep"  # "reprune": text-aware methods choose an image's tokens again for each follow-up
    # the LLM weighs each kept row by the patches it stands for: ln m_k on its logits. On by default: on 400
    # validation questions it added 6-10 points to dcp, divprune and cdpruner at 16 and 32 tokens (docs/dcp-prune.md)
    mass_bias: bool = True
    n_ctx: int = 4096  # capped at the model's training context
    n_threads: int | None = None  # None: llama.cpp's and PyTorch's defaults
    n_gpu_layers: int | None = None  # None: every layer when llama.cpp has a GPU backend, else 0
    device: str = "auto"  # the vision tower's torch device: auto (the GPU if any), cpu, cuda, mps
    vision_dtype: str = "auto"  # auto, float32, bfloat16, float16 (see vision.pick_dtype)
    engine: str = "llamacpp"  # the LLM in llama.cpp, or "torch" for evaluations (torch_llama.py)
    verbose: bool = False


@dataclass
class EncodedImage:
    """An image after the vision tower: the patch tokens pruning chooses from."""

    features: np.ndarray  # (n, width): 576 patches, or M anchors after in-encoder ACGR
    cls_attn: np.ndarray  # (n,) [CLS] attention of the last block
    keys: np.ndarray  # (n, width) keys of the last block
    masses: np.ndarray | None  # (n,) after in-encoder ACGR, else None (all 1)
    patch_idx: np.ndarray | None  # (n,) grid patches after in-encoder ACGR, else None (all)
    n_full: int  # 576
    timings_ms: dict[str, float] = field(default_factory=dict)  # vision (+ vision_saved_estimate)
    # after in-encoder ACGR: (n_full,) int32, the row of `features` each grid patch went to, -1 if dropped
    anchor_assignment: np.ndarray | None = None


@dataclass
class ImageTokens:
    """One image as the LLM sees it."""

    embeddings: np.ndarray  # (K, n_embd) float32
    selection: Selection  # which patches were kept, their masses, κ
    n_full: int  # patches before pruning (576)
    timings_ms: dict[str, float] = field(default_factory=dict)  # vision, prune, project
    # (n_full,) int32: the token (index into the K) each grid patch ended up in, -1 if dropped;
    # composed through in-encoder ACGR when it ran (see grid_assignment)
    grid_assignment: np.ndarray | None = None

    def rows(self, positions: str = "grid", mass_bias: bool = False) -> ImageRows:
        """What the engine decodes: the K rows, at their patches' positions unless "packed", each drawing
        attention as if it were its m_k patches when `mass_bias` (ln m_k added to every attention logit
        toward it: proportional attention, as in ToMe)."""
        bias = np.log(self.selection.masses).astype(np.float32) if mass_bias else None
        if positions == "packed":
            return ImageRows(self.embeddings, bias=bias)
        return ImageRows(self.embeddings, self.selection.indices, self.n_full, bias=bias)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


def check_budget(options: PipelineOptions, cfg: VisionConfig) -> tuple[int, int | None, int]:
    """(K, ACGR layer or None, M) for these options on this vision tower; InputError naming the
    command-line flag for anything out of range (an in-LLM method's schedule is checked against the LLM
    by Pipeline.check)."""
    if options.method not in METHODS + INLLM_METHODS:
        raise InputError(f"--method: unknown '{options.method}'; choose one of {', '.join(METHODS + INLLM_METHODS)}")
    if options.method in INLLM_METHODS:
        _check_inllm(options)
    if options.positions not in POSITIONS:
        raise InputError(f"--positions: unknown '{options.positions}'; choose one of {', '.join(POSITIONS)}")
    if options.follow_ups not in FOLLOW_UPS:
        raise InputError(f"--follow-ups: unknown '{options.follow_ups}'; choose one of {', '.join(FOLLOW_UPS)}")
    n_patches, n_blocks = cfg.n_patches, cfg.n_blocks
    n_keep = n_patches if options.method == "full" else options.n_keep
    n_keep = check_n_keep(n_keep, options.method, n_patches, (cfg.grid, cfg.grid), whole_grid=True,
                          argument="--tokens")
    layer = options.acgr_layer
    if layer is None or layer == n_blocks:
        return n_keep, None, n_patches
    if options.method in ("full", "pool"):
        raise InputError(f"--acgr-layer: method '{options.method}' needs all patches at the output; "
                         "drop --acgr-layer or pick another method")
    if not 1 <= layer < n_blocks:
        raise InputError(f"--acgr-layer: expected 1..{n_blocks} (the encoder has {n_blocks} blocks), got {layer}")
    anchors = options.acgr_anchors or min(n_patches, ANCHORS_PER_TOKEN * n_keep)
    if not n_keep <= anchors <= n_patches:
        raise InputError(f"--acgr-anchors: expected {n_keep}..{n_patches} (at least --tokens), got {anchors}")
    return n_keep, layer, anchors


def _check_inllm(options: PipelineOptions) -> None:
    if options.engine != "torch":
        raise InputError(f"--method {options.method} prunes inside the language model, between its decoder layers, "
                         "which llama.cpp cannot do; it runs on the PyTorch evaluation engine: add --engine torch "
                         "(dcp-eval)")
    if options.acgr_layer is not None:
        raise InputError(f"--acgr-layer: method '{options.method}' prunes inside the LLM and needs every patch at "
                         "the encoder's output; drop --acgr-layer")


class Pipeline:
    """A loaded model and one conversation. Close it (or use `with`) to free llama.cpp's memory."""

    def __init__(self, files: ModelFiles, options: PipelineOptions = PipelineOptions()):
        self.files = files
        self.token_embeddings: TokenEmbeddings | None = None
        self.chat_images: list[EncodedImage] = []  # the conversation's images, in order (for re-pruning)
        self.load_ms: dict[str, float] = {}
        with _timed(self.load_ms, "load"):
            self.info: ModelInfo = validate(files)  # cheap metadata checks before anything loads
            if options.n_threads:
                torch.set_num_threads(options.n_threads)
            device = pick_device(options.device)
            dtype = pick_dtype(options.vision_dtype, device)
            self.vision = VisionTower.from_gguf(files.mmproj, device=device, dtype=dtype)
            self.projector = Projector.from_gguf(files.mmproj, device=device, dtype=dtype)
            check_budget(options, self.vision.cfg)  # before the LLM loads
            self.engine = Engine(str(files.llm), n_ctx=min(options.n_ctx, self.info.n_ctx_train),
                                 n_threads=options.n_threads, n_gpu_layers=options.n_gpu_layers,
                                 verbose=options.verbose, backend=options.engine)
            self.configure(options)

    def configure(self, options: PipelineOptions) -> None:
        """Switch method, budget, encoder layer or knobs without reloading the models (the loading
        options — threads, device, context — keep the values the Pipeline was built with)."""
        self.n_keep, self.acgr_layer, self.n_anchors = self.check(options)
        self.options = options
        if reads_question(options.method, options.prune_options) and self.token_embeddings is None:
            self.token_embeddings = TokenEmbeddings(self.files.llm)  # question rows come from the LLM file

    def check(self, options: PipelineOptions) -> tuple[int, int | None, int]:
        """check_budget, and an in-LLM method's schedule against this LLM; InputError for what does not fit."""
        budget = check_budget(options, self.vision.cfg)
        if options.method in INLLM_METHODS:
            self.pruner(options, budget[0])
        return budget

    def pruner(self, options: PipelineOptions, n_keep: int):
        """A fresh hook that prunes the next turn's image inside the LLM (inllm/)."""
        return make_pruner(options.method, options.inllm_options, n_keep=n_keep, n_full=self.vision.cfg.n_patches,
                           n_layers=self.engine.llama.n_layers, grid_width=self.vision.cfg.grid)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- vision ------------------------------------------------------------------------------

    def encode_image(self, source) -> EncodedImage:
        """An image (path, bytes or PIL image) → its patch tokens at the encoder's output."""
        cfg, timings = self.vision.cfg, {}
        image = load_image(source)
        with _timed(timings, "vision"):
            pixels = preprocess(image, image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std)
            if self.acgr_layer is None:
                encoded = _as_encoded(self.vision.encode(pixels), None, cfg.n_patches)
            else:
                encoded = self._encode_with_acgr(pixels, timings)
        encoded.timings_ms = timings
        return encoded

    @torch.inference_mode()
    def _encode_with_acgr(self, pixels: np.ndarray, timings: dict) -> EncodedImage:
        """Blocks < L on all tokens, ACGR to M anchors, blocks ≥ L on CLS + anchors (log-mass bias)."""
        cfg, layer = self.vision.cfg, self.acgr_layer
        start = time.perf_counter()
        early = self.vision.encode(pixels, stop=layer)
        per_block_ms = (time.perf_counter() - start) * 1000.0 / layer  # full-token cost of one block
        anchors = select(early.patches.float().cpu().numpy(), early.cls_attn.float().cpu().numpy(),
                         keys=early.keys.float().cpu().numpy(), n_keep=self.n_anchors, method="acgr",
                         grid=(cfg.grid, cfg.grid), options=self.options.prune_options)
        recovered = torch.as_tensor(np.array(anchors.features), device=self.vision.device, dtype=early.hidden.dtype)
        hidden = torch.cat([early.hidden[:1], recovered])  # (1 + M, width): CLS first, anchors in patch order
        bias = torch.log(torch.as_tensor(np.concatenate([[1.0], anchors.masses]), device=hidden.device,
                                         dtype=hidden.dtype))
        late_start = time.perf_counter()
        late = self.vision.run_blocks(hidden, layer, cfg.n_blocks, attn_bias=bias)
        late_ms = (time.perf_counter() - late_start) * 1000.0
        # Estimate of what the skipped work would have cost: the later blocks at the per-block
        # full-token time measured on the early blocks of this very image.
        timings["vision_saved_estimate"] = max(0.0, per_block_ms * (cfg.n_blocks - layer) - late_ms)
        return _as_encoded(late, anchors, cfg.n_patches)

    # --- prune + project ---------------------------------------------------------------------

    def question_features(self, question: str) -> np.ndarray | None:
        """The question's token embeddings mapped into the vision feature space, (T, width)."""
        ids = self.engine.tokenize(question)
        if not ids:
            return None  # text-aware methods fall back to text-free scores
        return self.projector.text_to_features(self.token_embeddings.rows(ids))

    def prepare(self, image: EncodedImage, question: str) -> ImageTokens:
        """Prune an encoded image to K tokens for this question and project them."""
        cfg, timings = self.vision.cfg, dict(image.timings_ms)
        inllm = self.options.method in INLLM_METHODS  # every patch goes in; the LLM prunes (inllm/)
        with _timed(timings, "prune"):
            reads = reads_question(self.options.method, self.options.prune_options)
            text = self.question_features(question) if reads else None
            selection = select(image.features, image.cls_attn, keys=image.keys, masses=image.masses,
                               patch_idx=image.patch_idx, text=text, n_keep=cfg.n_patches if inllm else self.n_keep,
                               method="full" if inllm else self.options.method, grid=(cfg.grid, cfg.grid),
                               options=self.options.prune_options, seed=self.options.seed)
        with _timed(timings, "project"):
            embeddings = self.projector.project(selection.features)  # (K, n_embd)
        return ImageTokens(embeddings, selection, image.n_full, timings,
                           grid_assignment(selection.assignment, image.anchor_assignment))

    # --- language model ----------------------------------------------------------------------

    def ask(self, question: str, images: list[EncodedImage] = (),
            params: GenerationParams = GenerationParams()) -> Turn:
        """The answer to `question` about new `images` (pruned now with the question, then added to the
        conversation). Iterate the Turn for the answer's pieces; its figures are final when it ends."""
        if not question.strip():
            raise InputError("question: empty; ask something about the image")
        hooks = None
        if self.options.method in INLLM_METHODS and images:
            if len(images) > 1:
                raise InputError(f"--method {self.options.method} prunes one image per question inside the LLM; "
                                 f"this question brings {len(images)}")
            hooks = self.pruner(self.options, self.n_keep)
        repruned = []
        if self.reprunes_follow_ups and self.chat_images:
            repruned = [self.prepare(image, question) for image in self.chat_images]
        prepared = [self.prepare(image, question) for image in images]
        self.chat_images += images
        return Turn(self.engine, question, prepared, self.options, params, hooks, repruned)

    @property
    def reprunes_follow_ups(self) -> bool:
        """Whether follow-ups choose their own tokens: asked for, and the method reads the question
        (a text-free one, dcp by default, would choose the same tokens again)."""
        options = self.options
        return options.follow_ups == "reprune" and reads_question(options.method, options.prune_options)

    def new_chat(self) -> None:
        self.engine.new_chat()
        self.chat_images = []


class Turn:
    """One question and its streamed answer. Iterating it prefills the turn, then yields the answer's
    text pieces; stopping early (break, close()) keeps every piece so far in the conversation. Its
    figures fill in as it runs and are final once the iteration has ended."""

    def __init__(self, engine: Engine, question: str, images: list[ImageTokens], options: PipelineOptions,
                 params: GenerationParams, hooks=None, repruned: list[ImageTokens] = ()):
        self.images = images  # the pruned images this turn added
        self.repruned = list(repruned)  # the conversation's earlier images, pruned again for this question
        self.hooks = hooks  # what the LLM does between its layers in this turn's prefill (in-LLM pruning)
        self.prefill_flops: float | None = None  # the prefill's work, counted by the PyTorch engine
        self.image_tokens_per_layer: list[int] | None = None  # image cells each LLM layer holds (PyTorch engine)
        self.answer = ""
        self.prefill_ms = 0.0  # the turn's text and image rows into the cache
        self.first_token_ms: float | None = None  # from the start of the prefill to the first piece
        self.total_ms = 0.0  # prefill + answer
        self.n_prompt_tokens = 0  # text tokens + image rows the prefill decoded (a re-pruned chat's replay too)
        self.n_answer_tokens = 0  # tokens sampled and decoded, also when stopped early
        self._pieces = self._run(engine, question, options, params)

    @property
    def n_image_tokens(self) -> int:
        """Image rows this turn decoded (re-pruned ones included)."""
        return sum(len(image.embeddings) for image in self.images + self.repruned)

    @property
    def n_text_tokens(self) -> int:
        return self.n_prompt_tokens - self.n_image_tokens

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Answer tokens after the first, over the time after the first piece."""
        decode_ms = self.total_ms - (self.first_token_ms or 0.0)
        if self.first_token_ms is None or self.n_answer_tokens < 2 or decode_ms <= 0:
            return None
        return (self.n_answer_tokens - 1) / (decode_ms / 1000.0)

    def __iter__(self) -> Turn:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop the answer where it is (its figures are then final)."""
        self._pieces.close()

    def text(self) -> str:
        """Run the turn to its end; the whole answer."""
        for _ in self:
            pass
        return self.answer

    def _run(self, engine: Engine, question: str, options: PipelineOptions, params: GenerationParams) -> Iterator[str]:
        start = time.perf_counter()
        flops_before, replayed = engine.llama.flops, 0
        if self.repruned:  # the chat from its first image on, again
            replayed = engine.replace_images([image.rows(options.positions, options.mass_bias)
                                              for image in self.repruned])
        n_before = engine.n_past
        engine.add_user_turn(question, [image.rows(options.positions, options.mass_bias) for image in self.images],
                             self.hooks)
        self.prefill_ms = _ms_since(start)
        if flops_before is not None:
            self.prefill_flops = float(engine.llama.flops - flops_before)
        self.image_tokens_per_layer = engine.image_cells_per_layer()
        n_prompt = engine.n_past
        self.n_prompt_tokens = replayed + n_prompt - n_before
        try:
            for piece in engine.generate(params):
                if self.first_token_ms is None:
                    self.first_token_ms = _ms_since(start)
                self.answer += piece
                self.n_answer_tokens = engine.n_past - n_prompt
                yield piece
        finally:
            self.n_answer_tokens = engine.n_past - n_prompt
            self.total_ms = _ms_since(start)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def grid_assignment(assignment: np.ndarray, anchor_assignment: np.ndarray | None) -> np.ndarray:
    """(n_full,) int32 read-only: the output token each grid patch ended up in, -1 if dropped.
    `assignment` maps the pruner's input rows to output tokens; after in-encoder ACGR those rows
    are the M anchors and `anchor_assignment` maps grid patches to anchors, so the two compose."""
    assignment = np.asarray(assignment, dtype=np.int32)
    if anchor_assignment is None:
        grid = assignment.copy()
    else:
        grid = np.where(anchor_assignment >= 0, assignment[np.maximum(anchor_assignment, 0)], -1).astype(np.int32)
    grid.setflags(write=False)
    return grid


def _as_encoded(state: EncoderState, anchors: Selection | None, n_full: int) -> EncodedImage:
    def numpy(x: torch.Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    return EncodedImage(features=numpy(state.patches), cls_attn=numpy(state.cls_attn), keys=numpy(state.keys),
                        masses=None if anchors is None else np.array(anchors.masses),
                        patch_idx=None if anchors is None else np.array(anchors.indices), n_full=n_full,
                        anchor_assignment=None if anchors is None else anchors.assignment)
