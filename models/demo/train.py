"""Train the bundled demo model: LLaVA-1.5's architecture at small width, from random weights, on the
synthetic scenes (dcp_desktop.scenes), then export it to the GGUF pair dcp-desktop runs.

    python models/demo/train.py [--preset demo|smoke] [--steps N ...any Config field...]
                                [--device cpu|cuda] [--resume] [--out models/demo/out]

LLaVA-1.5 as it matters here: transformers `LlavaForConditionalGeneration`, a CLIP ViT at 336 px with
14 px patches (576 patches + CLS, quick-GELU; features from the second-to-last layer without CLS), the
Linear-GELU-Linear projector and a llama-architecture LLM. The prompt is exactly the one the engine
builds (Vicuna-v1, dcp_desktop.template) and the token ids are exactly llama.cpp's: `SpmTokenizer` is
llama.cpp's SentencePiece merge in Python, checked against llama.cpp on an exported file before
training starts. Small: the widths, the depths and the vocabulary (the benchmark's words as SentencePiece
pieces, export.spm_vocab).

One step: B images through the ViT once → (B, 576, n_embd) image rows. The LLM runs the prefix every
question of an image shares, `<s>SYSTEM USER: [576 image rows]`, once per image and keeps its KV cache;
the Q questions per image then run on that cache as conversations of 1..max_turns questions each, one row
per conversation, token for token as the engine decodes a chat: `\\n{q1} ASSISTANT: {a1}</s>USER: {q2}
ASSISTANT: {a2}</s>...`, with the loss on every answer and its </s> only. The image is always whole: 576
rows, never pruned, dropped or merged. [CLS] at the layer LLaVA reads (cls_at) predicts which shapes and
colours the image holds (a linear head, not exported), so CLS attention finds the content as in CLIP.
Step s reads curriculum_seeds(s) and Q questions each: a fresh set of images every step, so the data
order is a function of the step alone and --resume is exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers.cache_utils import DynamicCache
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from dcp_desktop import scenes, template
from dcp_desktop.export import Vocab, export_llava, read_llava_state, spm_vocab
from dcp_desktop.image import preprocess
from dcp_desktop.llama_context import LlamaVocab

NAME = "dcp-demo"  # the exported pair: NAME.gguf and mmproj-NAME.gguf
VISION_HEAD_DIM = 64  # as in CLIP ViT-L
IGNORE = -100  # cross_entropy's ignore_index: positions without a loss


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Saved in every checkpoint; --resume refuses a different one."""

    vision_width: int = 128
    vision_layers: int = 6  # LLaVA reads the second-to-last layer: the export stores 5 blocks
    llm_width: int = 128
    llm_layers: int = 3
    llm_head_dim: int = 32  # 4 heads at width 128: more heads find the asked-about object sooner (README)
    images_per_step: int = 8
    questions_per_image: int = 8  # one ViT pass and one prefix pass serve all of them
    steps: int = 3000
    lr: float = 1.5e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # the cosine ends at lr * this
    weight_decay: float = 0.05
    small_weight: float = 2.0  # loss weight of "small" questions (see README: why)
    patch_weight: float = 1.0  # loss weight of the patch labels, the vision tower's own task (README: why)
    object_patch_weight: float = 2.0  # extra weight of the patches that show an object (README: why)
    hint_weight: float = 0.5  # loss weight of answering from every question position (README: why)
    curriculum_steps: int = 900  # scenes hold at most 1, 2, ... 8 objects over these first steps (README)
    ground_weight: float = 1.0  # loss weight of looking at the asked-about objects (README: why)
    ground_layer: int = 1  # the LLM layer whose first head learns where to look
    cls_weight: float = 1.0  # loss weight of [CLS] naming the image's shapes and colours (README: why)
    cls_at: str = "gather"  # where the CLS head reads: "gather" (the layer LLaVA reads) or "last" (the ViT's output)
    max_turns: int = 4  # an image's questions form conversations of 1..max_turns questions (README: why)
    bf16: bool = True  # autocast; master weights and the optimizer stay float32
    log_every: int = 20
    eval_every: int = 500
    eval_images: int = 128  # validation images (× questions_per_image questions), the standard set
    checkpoint_every: int = 500
    seed: int = 0  # weight init; the data order depends on the step only
    init_from: str = ""  # a checkpoint, or a folder with the exported pair, whose weights start this run (README)
    first_set: int = 0  # step s trains on the train split's image set first_set + s: fresh images after init_from


PRESETS = {
    "demo": Config(),
    "smoke": Config(vision_width=64, vision_layers=2, llm_width=64, llm_layers=2, images_per_step=2,
                    questions_per_image=2, steps=30, warmup_steps=5, log_every=5, eval_every=15,
                    eval_images=4, checkpoint_every=15),
}


# ---- tokens -----------------------------------------------------------------------------------------

def demo_vocab() -> Vocab:
    """Pieces for every word the prompts and answers use: the benchmark's words (also capitalised, as
    questions start), the system line's words and the template's USER / ASSISTANT. One spare piece at the
    end stands for transformers' <image> token; the size is a multiple of 64."""
    words = set(scenes.WORDS) | {w.capitalize() for w in scenes.WORDS}
    words |= template.template_words()
    n_pieces = len(spm_vocab(sorted(words)).tokens) + 1
    return spm_vocab(sorted(words), size=64 * math.ceil(n_pieces / 64))


class SpmTokenizer:
    """llama.cpp's SentencePiece ("llama" vocab) tokenizer for an export.Vocab, as Engine.tokenize calls
    it: a space is put in front (add_space_prefix), spaces become '▁', then adjacent symbols merge while
    any pair forms a piece — the highest-scoring pair first, the leftmost on ties (llm_tokenizer_spm's
    priority queue) — and a symbol that is no piece falls back to its UTF-8 byte pieces."""

    def __init__(self, vocab: Vocab):
        self.ids = {piece: i for i, piece in enumerate(vocab.tokens)}
        self.scores = vocab.scores
        self.bos, self.eos = vocab.bos_id, vocab.eos_id

    def encode(self, text: str) -> list[int]:
        symbols = list("▁" + text.replace(" ", "▁"))
        while True:
            best, best_score = None, -math.inf
            for i in range(len(symbols) - 1):
                piece = self.ids.get(symbols[i] + symbols[i + 1])
                if piece is not None and self.scores[piece] > best_score:
                    best, best_score = i, self.scores[piece]
            if best is None:
                return [i for symbol in symbols for i in self._ids(symbol)]
            symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]

    def _ids(self, symbol: str) -> list[int]:
        if symbol in self.ids:
            return [self.ids[symbol]]
        return [self.ids[f"<0x{byte:02X}>"] for byte in symbol.encode("utf-8")]

    # The engine's template, piece by piece (dcp_desktop.template).
    def prefix(self) -> list[int]:
        """`<s>{SYSTEM} USER:`: what comes before the image rows, the same for every question."""
        return template.system_ids(self.encode, self.bos) + template.turn_head_ids(self.encode, self.eos,
                                                                                  after_answer=False)

    def question(self, question: str) -> list[int]:
        return template.turn_tail_ids(self.encode, question, has_images=True)

    def answer(self, answer: str) -> list[int]:
        return template.answer_ids(self.encode, answer, self.eos)


def check_tokenizer(tokenizer: SpmTokenizer, llm_gguf: Path, texts: list[str]) -> None:
    """Raise unless llama.cpp, loading `llm_gguf`'s vocabulary, tokenises every text as we do."""
    with LlamaVocab(llm_gguf) as llama:
        for text in texts:
            theirs = llama.tokenize(text)
            ours = tokenizer.encode(text)
            if ours != theirs:
                raise RuntimeError(f"tokenisation of {text!r} differs from llama.cpp's: ours {ours}, "
                                   f"llama.cpp {theirs} ({llm_gguf}); fix SpmTokenizer before training")


def template_texts(items: list[scenes.Question]) -> list[str]:
    """Every text the engine tokenises for these items, in the engine's pieces: as a first question and
    as a follow-up."""
    return [template.SYSTEM, template.USER, *sorted(scenes.ANSWERS)] + [
        template.turn_tail_text(item.question, has_images=images) for item in items for images in (True, False)]


# ---- model ------------------------------------------------------------------------------------------

def build_model(cfg: Config, vocab_size: int) -> transformers.LlavaForConditionalGeneration:
    """A random LLaVA-1.5-architecture model (float32) at the config's widths and depths."""
    torch.manual_seed(cfg.seed)
    vision = transformers.CLIPVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_width // VISION_HEAD_DIM,
        image_size=scenes.IMAGE_SIZE, patch_size=14, projection_dim=cfg.vision_width, hidden_act="quick_gelu",
        layer_norm_eps=1e-5)
    text = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.llm_width, intermediate_size=64 * round(cfg.llm_width * 8 / 3 / 64),
        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_width // cfg.llm_head_dim,
        num_key_value_heads=cfg.llm_width // cfg.llm_head_dim, max_position_embeddings=2048, rms_norm_eps=1e-6)
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=vocab_size - 1,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = transformers.LlavaForConditionalGeneration(config)
    model.model.language_model.set_attn_implementation("eager")  # returns attention weights (grounding)
    # Training only (the exporter reads neither): patch features → shape, colour and centre logits.
    model.patch_probe = torch.nn.Linear(cfg.vision_width, sum(PATCH_CLASSES))
    # Training only: [CLS] → which shapes and colours the image holds (multi-label logits).
    model.cls_head = torch.nn.Linear(cfg.vision_width, len(CLS_CLASSES))
    return model


PATCH_CLASSES = (len(scenes.SHAPES) + 1, len(scenes.COLOURS) + 1, 2)  # the columns of scenes.patch_labels
CLS_CLASSES = (*scenes.SHAPES, *scenes.COLOURS)  # the columns of cls_targets
CLS_LAYERS = {"gather": -2, "last": -1}  # hidden_states index of the layer whose CLS the head reads


@dataclass
class Seen:
    patches: torch.Tensor  # (B, 576, vision_width) the ViT features LLaVA reads (second-to-last layer, CLS dropped)
    image_rows: torch.Tensor  # (B, 576, llm_width) what they project to
    cls: torch.Tensor  # (B, vision_width) [CLS] at cls_at
    hidden: tuple  # every layer's hidden states, (B, 577, vision_width) each, CLS first


def see(model, pixels: torch.Tensor, cls_at: str = "gather") -> Seen:
    """pixels (B, 3, 336, 336) → what the ViT gives LLaVA and the CLS head."""
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    patches = hidden[-2][:, 1:]
    return Seen(patches, model.model.multi_modal_projector(patches), hidden[CLS_LAYERS[cls_at]][:, 0], hidden)


def cls_attention(model, hidden: tuple) -> torch.Tensor:
    """[CLS]→patch attention, mean over heads, in the block that outputs the gather layer (the last block
    the export stores: what the app's pruning methods score with), (B, 576). hidden: Seen.hidden."""
    layer = model.model.vision_tower.encoder.layers[-2]
    attn = layer.self_attn
    x = layer.layer_norm1(hidden[-3])  # (B, 577, d): that block's input, pre-LN
    b, t, d = x.shape
    q = attn.q_proj(x[:, :1]).view(b, 1, -1, attn.head_dim).transpose(1, 2)  # (B, h, 1, hd)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)  # (B, h, 577, hd)
    weights = (q.float() @ k.float().transpose(-1, -2) * attn.scale).softmax(-1)  # (B, h, 1, 577)
    return weights.mean(1)[:, 0, 1:]


def cls_targets(scene: scenes.Scene) -> np.ndarray:
    """(len(CLS_CLASSES),) float32: 1 for every shape and colour some object in the scene has (small
    objects too), else 0."""
    present = {o.shape for o in scene.objects} | {o.colour for o in scene.objects}
    return np.array([name in present for name in CLS_CLASSES], dtype=np.float32)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for telling `positive` (bool) from the rest (ties count half)."""
    ranks = average_ranks(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks, 1-based (scipy.stats.rankdata without scipy)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def answer_logits(model, image_rows: torch.Tensor, prefix: torch.Tensor, rows: torch.Tensor,
                  image_of: torch.Tensor, attention_layer: int | None = None):
    """Logits over every row position, (n, T, vocab); with attention_layer, also that layer's attention
    weights from the rows onto the image rows, (n, heads, T, 576).

    image_rows (B, 576, llm_width); prefix (P,) ids shared by all; rows (n, T) question + answer ids,
    padded on the right (causal attention: real tokens never see the padding); image_of (n,) the image of
    each row.
    """
    lm, embed = model.model.language_model, model.model.language_model.get_input_embeddings()
    head = embed(prefix).unsqueeze(0).expand(len(image_rows), -1, -1)  # (B, P, n_embd)
    cache = DynamicCache(config=model.config.text_config)
    lm(inputs_embeds=torch.cat([head, image_rows.to(head.dtype)], 1), past_key_values=cache, use_cache=True)
    cache.batch_select_indices(image_of)  # (B, ...) → (n, ...): each row continues its own image
    out = lm(inputs_embeds=embed(rows), past_key_values=cache, use_cache=True,
             output_attentions=attention_layer is not None)
    logits = model.lm_head(out.last_hidden_state)  # (n, T, vocab)
    if attention_layer is None:
        return logits
    images = slice(len(prefix), len(prefix) + image_rows.shape[1])
    return logits, out.attentions[attention_layer][..., images]


# ---- data -------------------------------------------------------------------------------------------

@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, 336, 336) normalised
    patch_labels: torch.Tensor  # (B, 576, 3) scenes.patch_labels, row-major patches
    cls_targets: torch.Tensor  # (B, len(CLS_CLASSES)) cls_targets: the shapes and colours present
    rows: torch.Tensor  # (n, T) one conversation per row (conversation_ids), right-padded with </s>
    targets: torch.Tensor  # (n, T) the next answer token (or </s>) where the loss applies, else IGNORE
    hints: torch.Tensor  # (n, T) the answer's first token at its question's positions before the last, else IGNORE
    weights: torch.Tensor  # (n, T) loss weight per position (its question's)
    image_of: torch.Tensor  # (n,) which image each row asks about
    answer_at: torch.Tensor  # (m, 2) per question: (row, the position whose logits give the first answer token)
    turns: torch.Tensor  # (m,) per question: its place in its conversation, 0 for the first
    ground_at: torch.Tensor  # (g, 2) (row, position) pairs that should look at ...
    ground_patches: torch.Tensor  # (g, 576) ... these patches (bool): the objects the question names
    types: list[str]  # (m,) per question

    def to(self, device: torch.device) -> Batch:
        tensors = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Batch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()})


@dataclass(frozen=True)
class Turn:
    start: int  # where the question's tail (`\n{question} ASSISTANT:` or ` {question} ASSISTANT:`) starts
    answer_at: int  # its last position: its logits give the answer's first token
    answer: list[int]  # ` {answer}</s>`: targets at answer_at, answer_at + 1, ...


def conversation_ids(tokenizer: SpmTokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], list[Turn]]:
    """A conversation about one image, after its image rows, exactly as the engine decodes it: the first
    question's tail, the answer's pieces (llama.cpp does not decode the </s> it samples), then for each
    follow-up `</s>USER:` (template.turn_head_ids after an answer) and ` {question} ASSISTANT:`, ...
    Returns the ids the model reads (the last answer's </s> is only a target) and each turn's places."""
    ids, places = [], []
    for k, (question, answer) in enumerate(turns):
        if k:
            ids += template.turn_head_ids(tokenizer.encode, tokenizer.eos, after_answer=True)
        start = len(ids)
        ids += template.turn_tail_ids(tokenizer.encode, question, has_images=k == 0)
        places.append(Turn(start, len(ids) - 1, template.answer_ids(tokenizer.encode, answer, tokenizer.eos)))
        ids += places[-1].answer[:-1]
    return ids, places


def conversation_lengths(image_seed: int, n_questions: int, max_turns: int, fixed: bool = False) -> list[int]:
    """How an image's n questions split into conversations: lengths 1..max_turns drawn from the image's
    seed (the data stays a function of the step), or all max_turns with `fixed` (the last may be shorter)."""
    rng = np.random.default_rng([image_seed, 7])
    lengths = []
    while sum(lengths) < n_questions:
        lengths.append(min(max_turns if fixed else int(rng.integers(1, max_turns + 1)), n_questions - sum(lengths)))
    return lengths


def make_batch(items: list[scenes.Question], tokenizer: SpmTokenizer, small_weight: float, max_turns: int = 1,
               fixed_turns: bool = False) -> Batch:
    """Render the items' images (each once) and lay out their questions, image by image, as
    conversations (conversation_lengths) of whole images."""
    groups = [list(g) for _, g in itertools.groupby(items, key=lambda item: item.image_seed)]
    pixels = np.stack([preprocess(g[0].image(), image_size=scenes.IMAGE_SIZE, mean=OPENAI_CLIP_MEAN,
                                  std=OPENAI_CLIP_STD) for g in groups])  # (B, 3, 336, 336)
    layouts = [scenes.make_scene(g[0].image_seed) for g in groups]
    owners = [scenes.patch_owners(layout) for layout in layouts]  # (24, 24) each
    chats = []  # (image, [items], ids, [Turn])
    for i, g in enumerate(groups):
        taken = 0
        for length in conversation_lengths(g[0].image_seed, len(g), max_turns, fixed_turns):
            chat = g[taken:taken + length]
            taken += length
            chats.append((i, chat, *conversation_ids(tokenizer, [(item.question, item.answer) for item in chat])))
    width = max(len(ids) for _, _, ids, _ in chats)
    rows = torch.full((len(chats), width), tokenizer.eos)
    targets = torch.full((len(chats), width), IGNORE)
    hints = torch.full((len(chats), width), IGNORE)
    weights = torch.zeros((len(chats), width))
    answer_at, turns, types, ground = [], [], [], []
    for r, (i, chat, ids, places) in enumerate(chats):
        rows[r, :len(ids)] = torch.tensor(ids)
        for k, (item, turn) in enumerate(zip(chat, places)):
            end = turn.answer_at + len(turn.answer)
            targets[r, turn.answer_at:end] = torch.tensor(turn.answer)  # position t predicts token t + 1
            hints[r, turn.start:turn.answer_at] = turn.answer[0]
            weights[r, turn.start:end] = small_weight if item.type == "small" else 1.0
            answer_at.append((r, turn.answer_at))
            turns.append(k)
            types.append(item.type)
            lead = "\n" if k == 0 else " "
            ground += [(r, turn.start + position, patches) for position, patches in
                       grounding(item.question, turn.answer_at - turn.start, layouts[i], owners[i].reshape(-1),
                                 tokenizer, lead=lead)]
    labels = np.stack([scenes.labels_of(layout, o).reshape(-1, 3) for layout, o in zip(layouts, owners)])
    return Batch(pixels=torch.from_numpy(pixels), patch_labels=torch.from_numpy(labels),
                 cls_targets=torch.from_numpy(np.stack([cls_targets(layout) for layout in layouts])),
                 rows=rows, targets=targets, hints=hints, weights=weights,
                 image_of=torch.tensor([i for i, _, _, _ in chats]),
                 answer_at=torch.tensor(answer_at, dtype=torch.long).view(-1, 2),
                 turns=torch.tensor(turns, dtype=torch.long),
                 ground_at=torch.tensor([(r, position) for r, position, _ in ground], dtype=torch.long).view(-1, 2),
                 ground_patches=torch.from_numpy(np.array([p for _, _, p in ground], dtype=bool).reshape(-1, scenes.GRID**2)),
                 types=types)


_SHAPE_WORDS = {**{s: s for s in scenes.SHAPES}, **{p: s for s, p in scenes.PLURALS.items()}}


def grounding(question: str, answer_at: int, scene: scenes.Scene, owners: np.ndarray,
              tokenizer: SpmTokenizer, lead: str = "\n") -> list[tuple[int, np.ndarray]]:
    """Where the question's row should look: (position, patches (576,) bool) pairs. Each mention of
    objects ("the red star", "the hexagon", "blue objects", "objects") looks, from its last word, at the
    patches of the objects it names; the last question position, answer_at, looks at all of them. A
    mention that names nothing in the image (the answer is "no" or "zero") gives no pair. owners (576,)
    is scenes.patch_owners, row-major. Positions count from the question's tail, which starts with `lead`:
    a new line after the image, a space in a follow-up (template.turn_tail_text)."""
    text = lead + question
    small = " small " in question
    pairs, colour = [], None
    for word in re.finditer(r"[A-Za-z]+", text):
        if word.group() in scenes.COLOURS:
            colour = word.group()
        elif word.group() in _SHAPE_WORDS or word.group() in ("object", "objects"):
            named = [number for number, o in enumerate(scene.objects, 1) if colour in (None, o.colour)
                     and _SHAPE_WORDS.get(word.group()) in (None, o.shape) and (o.is_small or not small)]
            if named:
                position = len(tokenizer.encode(text[:word.end()])) - 1
                pairs.append((position, np.any([object_patches(n, scene, owners) for n in named], axis=0)))
            colour = None
    if pairs:
        pairs.append((answer_at, np.any([p for _, p in pairs], axis=0)))
    return pairs


def object_patches(number: int, scene: scenes.Scene, owners: np.ndarray) -> np.ndarray:
    """(576,) bool: the patches that show object `number` (1-based), or the patch of its centre when none
    does (a tiny object)."""
    patches = owners == number
    if not patches.any():
        obj = scene.objects[number - 1]
        patches[obj.y // scenes.PATCH * scenes.GRID + obj.x // scenes.PATCH] = True
    return patches


def curriculum_seeds(step: int, cfg: Config) -> list[int]:
    """Step s's training images: scenes.image_seeds("train", B, seed=first_set + s), except that during the
    curriculum the scan over that set skips scenes with more than 1 + 8·s / curriculum_steps objects. One
    object first makes "read the colour of the object patches" pay off at once; the model then learns to
    tell objects apart as more share the image."""
    first = scenes.image_seeds("train", 0, seed=cfg.first_set + step).start
    if step >= cfg.curriculum_steps:
        return list(range(first, first + cfg.images_per_step))
    most = 1 + scenes.MAX_OBJECTS * step // cfg.curriculum_steps
    fitting = (s for s in itertools.count(first) if len(scenes.make_scene(s).objects) <= most)
    return list(itertools.islice(fitting, cfg.images_per_step))


class TrainBatches(torch.utils.data.Dataset):
    """Batch s = a fresh set of training scenes (curriculum_seeds), Q questions each."""

    def __init__(self, cfg: Config, tokenizer: SpmTokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> Batch:
        items = [item for image_seed in curriculum_seeds(step, self.cfg)
                 for item in scenes.questions_about(image_seed, self.cfg.questions_per_image)]
        return make_batch(items, self.tokenizer, self.cfg.small_weight, self.cfg.max_turns)


def validation_batches(cfg: Config, tokenizer: SpmTokenizer, turns: int = 1):
    """The standard validation set's first `eval_images` images, B at a time; each question on its own
    (turns 1, the measure of runs 1-11), or as conversations of `turns` questions."""
    items = scenes.make_split("validation", cfg.eval_images, cfg.questions_per_image)
    groups = [list(g) for _, g in itertools.groupby(items, key=lambda item: item.image_seed)]
    for start in range(0, len(groups), cfg.images_per_step):
        yield make_batch(sum(groups[start:start + cfg.images_per_step], []), tokenizer, 1.0, turns, fixed_turns=True)


# ---- training -----------------------------------------------------------------------------------------

def weighted_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions with a target (n, T), each weighted by weights (n, T)."""
    token_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                                 reduction="none").view(targets.shape)  # (n, T)
    counted = (targets != IGNORE).float() * weights
    return (token_loss * counted).sum() / counted.sum()


def patch_loss(patch_logits: torch.Tensor, labels: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Cross-entropy of the probe's shape, colour and centre logits, (B, 576, sum(PATCH_CLASSES)), against
    scenes.patch_labels (B, 576, 3), summed over the three columns: the mean over all patches plus
    object_weight × the mean over the patches that show an object. Most patches are background, and
    without the second term telling them from objects is most of the loss, while shape, the hard part,
    counts for little."""
    columns = patch_logits.float().split(PATCH_CLASSES, dim=-1)
    shows_object = labels[..., 0].flatten() > 0
    total = patch_logits.new_zeros((), dtype=torch.float32)
    for i, column in enumerate(columns):
        each = F.cross_entropy(column.flatten(0, 1), labels[..., i].flatten(), reduction="none")
        total = total + each.mean()
        if shows_object.any():
            total = total + object_weight * each[shows_object].mean()
    return total


def cls_loss(cls_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the CLS head's logits (B, len(CLS_CLASSES)) against cls_targets, mean."""
    return F.binary_cross_entropy_with_logits(cls_logits.float(), targets)


def ground_loss(attention: torch.Tensor, at: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """-log of the attention mass the first head puts on the named objects' patches, averaged over the
    (row, position) pairs `at` (m, 2); attention (n, heads, T, 576), patches (m, 576) bool."""
    if len(at) == 0:
        return attention.new_zeros(())
    looked = attention[at[:, 0], 0, at[:, 1]].float()  # (m, 576)
    return -torch.log((looked * patches).sum(-1) + 1e-6).mean()


def autocast(cfg: Config, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


def make_optimizer(model, cfg: Config):
    """AdamW (decay on matrices only) and linear warm-up into a cosine down to min_lr_ratio."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


LOSSES = ("loss", "patch_loss", "hint_loss", "ground_loss", "cls_loss")  # what train_step returns, in order


def train_step(model, optimizer, scheduler, prefix: torch.Tensor, batch: Batch,
               cfg: Config) -> tuple[float, float, float, float, float]:
    """One optimiser step on the answers' loss + patch_weight × the patch labels' loss + hint_weight × the
    hints' loss + ground_weight × the grounding loss + cls_weight × the CLS head's loss; returns the five."""
    model.train()
    with autocast(cfg, prefix.device):
        seen = see(model, batch.pixels, cfg.cls_at)
        logits, attention = answer_logits(model, seen.image_rows, prefix, batch.rows, batch.image_of, cfg.ground_layer)
        patch_logits = model.patch_probe(seen.patches)
        cls_logits = model.cls_head(seen.cls)
    answers = weighted_loss(logits, batch.targets, batch.weights)
    hints = weighted_loss(logits, batch.hints, batch.weights)
    labels = patch_loss(patch_logits, batch.patch_labels, cfg.object_patch_weight)
    ground = ground_loss(attention, batch.ground_at, batch.ground_patches)
    cls = cls_loss(cls_logits, batch.cls_targets)
    optimizer.zero_grad(set_to_none=True)
    (answers + cfg.patch_weight * labels + cfg.hint_weight * hints + cfg.ground_weight * ground
     + cfg.cls_weight * cls).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return answers.item(), labels.item(), hints.item(), ground.item(), cls.item()


@torch.no_grad()
def evaluate(model, prefix: torch.Tensor, batches, cfg: Config) -> dict:
    """Greedy first-token accuracy (every answer is one piece: the token greedy decoding emits first),
    overall, per question type, and for first questions and follow-ups (earlier answers teacher-forced);
    the CLS head's loss; cls_auc, the mean over images of the AUC with which CLS attention at the gather
    layer (cls_attention) tells the patches that show an object from the rest."""
    model.eval()
    right: dict[str, list[bool]] = {}
    by_turn: dict[str, list[bool]] = {"first": [], "follow_up": []}
    aucs, cls_losses = [], []
    for batch in batches:
        batch = batch.to(prefix.device)
        with autocast(cfg, prefix.device):
            seen = see(model, batch.pixels, cfg.cls_at)
            logits = answer_logits(model, seen.image_rows, prefix, batch.rows, batch.image_of)
            cls_losses.append(cls_loss(model.cls_head(seen.cls), batch.cls_targets).item())
        at = batch.answer_at
        oks = (logits[at[:, 0], at[:, 1]].argmax(-1) == batch.targets[at[:, 0], at[:, 1]]).tolist()
        for kind, turn, ok in zip(batch.types, batch.turns.tolist(), oks):
            right.setdefault(kind, []).append(ok)
            by_turn["first" if turn == 0 else "follow_up"].append(ok)
        attention = cls_attention(model, seen.hidden).cpu().numpy()  # (B, 576)
        objects = (batch.patch_labels[..., 0] > 0).cpu().numpy()  # (B, 576)
        aucs += [auc(a, o) for a, o in zip(attention, objects) if 0 < o.sum() < len(o)]
    every = [ok for oks in right.values() for ok in oks]
    return {"accuracy": float(np.mean(every)), "by_type": {k: float(np.mean(v)) for k, v in sorted(right.items())},
            **{k: float(np.mean(v)) if v else None for k, v in by_turn.items()},
            "cls_loss": float(np.mean(cls_losses)), "cls_auc": float(np.mean(aucs)) if aucs else None}


# ---- checkpoints -----------------------------------------------------------------------------------

def save_checkpoint(path: Path, model, optimizer, scheduler, cfg: Config, step: int) -> None:
    """Everything to go on after `step` steps; written to a temporary file first, so a crash mid-write
    leaves the previous checkpoint intact."""
    partial = path.with_suffix(".partial")
    torch.save({"config": dataclasses.asdict(cfg), "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, partial)
    partial.replace(path)


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg: Config) -> int:
    """Restore a checkpoint of the same config; returns the number of steps it had done."""
    if not path.exists():
        raise SystemExit(f"--resume: no checkpoint at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    differs = {k: (v, getattr(cfg, k)) for k, v in state["config"].items() if getattr(cfg, k) != v}
    if differs:
        listed = ", ".join(f"{k}: checkpoint {old}, asked {new}" for k, (old, new) in differs.items())
        raise SystemExit(f"--resume: {path} was trained with another config ({listed}); "
                         "pass the same flags or start without --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["step"]


# ---- the run ------------------------------------------------------------------------------------------

class Log:
    """One line per event on stdout and in out/log.jsonl (appended to, so a resumed run continues it)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, text: str, **record) -> None:
        print(text, flush=True)
        self.file.write(json.dumps({"time": round(time.time(), 1), **record}) + "\n")
        self.file.flush()


def train(cfg: Config, out: Path, device: torch.device, resume: bool = False, workers: int = 0) -> tuple[Path, Path]:
    """Train (or go on training), evaluate and checkpoint along the way, export; returns the GGUF pair."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = demo_vocab()
    tokenizer = SpmTokenizer(vocab)
    model = build_model(cfg, len(vocab.tokens))
    with tempfile.TemporaryDirectory() as scratch:  # before hours of training: do our ids equal llama.cpp's?
        llm, _ = export_llava(model, vocab, scratch, name=NAME)
        check_tokenizer(tokenizer, llm, template_texts(scenes.make_split("train", 50)))
    model.to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    checkpoint, log = out / "checkpoint.pt", Log(out / "log.jsonl")
    if cfg.init_from and not resume:
        init_weights(model, Path(cfg.init_from))
    start = load_checkpoint(checkpoint, model, optimizer, scheduler, cfg) if resume else 0
    prefix = torch.tensor(tokenizer.prefix(), device=device)
    log(f"config {dataclasses.asdict(cfg)}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
        f"device {device}; starting at step {start}", event="start", config=dataclasses.asdict(cfg), step=start)
    loader = torch.utils.data.DataLoader(TrainBatches(cfg, tokenizer), batch_size=None,
                                         sampler=range(start, cfg.steps), num_workers=workers)
    clock, losses = time.perf_counter(), []
    for step, batch in zip(range(start + 1, cfg.steps + 1), loader):
        losses.append(train_step(model, optimizer, scheduler, prefix, batch.to(device), cfg))
        if step % cfg.log_every == 0 or step == cfg.steps:
            seconds, clock = time.perf_counter() - clock, time.perf_counter()
            questions_per_s = len(losses) * len(batch.types) / seconds
            means = dict(zip(LOSSES, np.mean(losses, axis=0).tolist()))
            log(" ".join([f"step {step}/{cfg.steps}", *(f"{k.replace('_', ' ')} {v:.4f}" for k, v in means.items()),
                          f"lr {scheduler.get_last_lr()[0]:.2e} {questions_per_s:.1f} questions/s "
                          f"({questions_per_s / cfg.questions_per_image:.1f} images/s)"]),
                event="train", step=step, **means, questions_per_s=questions_per_s)
            losses = []
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result = evaluate(model, prefix, validation_batches(cfg, tokenizer), cfg)
            chats = evaluate(model, prefix, validation_batches(cfg, tokenizer, turns=4), cfg)
            log(f"step {step} validation accuracy {result['accuracy']:.3f} "
                + " ".join(f"{k} {v:.2f}" for k, v in result["by_type"].items())
                + f"; as chats of 4: first {chats['first']:.3f} follow-ups {chats['follow_up']:.3f}; "
                f"cls loss {result['cls_loss']:.4f} cls auc {result['cls_auc']:.3f}", event="eval", step=step,
                **result, chats={k: chats[k] for k in ("accuracy", "first", "follow_up")})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(checkpoint, model, optimizer, scheduler, cfg, step)
    return export(model, out, log)


def init_weights(model, source: Path) -> None:
    """Start from earlier weights, not their optimiser: a checkpoint.pt, or a folder holding the exported
    f16 pair (e.g. dcp_desktop/demo/). The pair lacks the patch probe and what LLaVA never reads (the
    last ViT block, the post-LN) nor the CLS head, which keep their random start; the probe relearns within a
    few hundred steps."""
    if source.is_file():
        model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True)["model"])
        return
    llm, mmproj = source / f"{NAME}.gguf", source / f"mmproj-{NAME}.gguf"
    if not (llm.is_file() and mmproj.is_file()):
        raise SystemExit(f"--init-from: {source} is neither a checkpoint nor a folder with {llm.name} and {mmproj.name}")
    state = {key: torch.from_numpy(value) for key, value in read_llava_state(model.config, llm, mmproj).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unread = (f"model.vision_tower.encoder.layers.{model.config.vision_config.num_hidden_layers - 1}.",
              "model.vision_tower.post_layernorm.", "patch_probe.", "cls_head.")
    left = [key for key in missing if not key.startswith(unread)]
    if left or unexpected:
        raise SystemExit(f"--init-from {source}: tensors missing {left}, unexpected {unexpected}")


def export(model, out: Path, log: Log) -> tuple[Path, Path]:
    """The f16 GGUF pair in `out`, its vocabulary checked against llama.cpp once more."""
    vocab = demo_vocab()
    pair = export_llava(model.float().cpu(), vocab, out, name=NAME, dtype="f16")
    check_tokenizer(SpmTokenizer(vocab), pair[0], template_texts(scenes.make_split("test", 20)))
    log(f"exported {pair[0]} ({pair[0].stat().st_size / 1e6:.1f} MB) and {pair[1]} "
        f"({pair[1].stat().st_size / 1e6:.1f} MB)", event="export", files=[str(p) for p in pair])
    return pair


def export_checkpoint(out: Path) -> tuple[Path, Path]:
    """Export out/checkpoint.pt as it is (e.g. a run stopped before its last step), with its own config."""
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(Config(**state["config"]), len(demo_vocab().tokens))
    model.load_state_dict(state["model"])
    log = Log(out / "log.jsonl")
    log(f"exporting the checkpoint of step {state['step']}", event="export-checkpoint", step=state["step"])
    return export(model, out, log)


_ARG_TYPES = {"int": int, "float": float, "str": str, "bool": lambda text: text.lower() in ("1", "true", "yes", "on")}


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="demo", help="base config (default demo)")
    for field in dataclasses.fields(Config):
        kind = _ARG_TYPES[field.type]  # the annotation as a string (postponed annotations)
        parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=None, metavar="V",
                            help=f"(demo preset: {getattr(PRESETS['demo'], field.name)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out",
                        help="checkpoint, log and exported GGUF pair (default models/demo/out)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes rendering scenes (default 4 on cuda, 0 on cpu: there they would take "
                             "cores from training)")
    parser.add_argument("--resume", action="store_true", help="go on from OUT/checkpoint.pt (same config)")
    parser.add_argument("--export-only", action="store_true",
                        help="export OUT/checkpoint.pt to the GGUF pair without training (its own config)")
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    if overrides.get("cls_at", "gather") not in CLS_LAYERS:
        parser.error(f"--cls-at: expected one of {', '.join(CLS_LAYERS)}, got {overrides['cls_at']!r}")
    return dataclasses.replace(PRESETS[args.preset], **overrides), args


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    if args.export_only:
        export_checkpoint(args.out)
        return
    train(cfg, args.out, device, resume=args.resume, workers=workers)


if __name__ == "__main__":
    main()
