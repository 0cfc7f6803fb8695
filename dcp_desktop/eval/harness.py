"""dcp-eval's core: accuracy, κ and time of every pruning method × token budget on one loaded model.

    benchmark = scenes_benchmark("test", n_images=100)      or   read_jsonl("my.jsonl")
    result = report.evaluate(pipe, benchmark, cells(methods, budgets))   -> dict (the --json schema)
    print(report.table(result))                                   -> Markdown
    report.plot(result, "accuracy.png")                           -> PNG (needs matplotlib)

The vision tower runs once per image (with in-encoder ACGR: once per image and budget, since the anchor
count follows K). Every cell (method, K) then prunes, projects and answers each question of the image in a
fresh conversation that keeps the cached system prefix; "full" (all 576 tokens, no in-encoder pruning)
is always one of the cells, as the upper bound `retention` divides by.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .. import scenes
from ..engine import GenerationParams
from ..errors import InputError
from ..pipeline import EncodedImage, Pipeline, PipelineOptions

FULL = "full"
STAGES = ("prune", "project", "prefill", "answer")  # per question; "vision" is per image
SHORT_ANSWER = GenerationParams(max_tokens=4)  # greedy; every benchmark answer is one word


@dataclass(frozen=True)
class Example:
    """One question about one image: a scenes image seed (rendered on demand) or an image file."""

    image: int | Path
    question: str
    answer: str
    type: str = "all"

    def load(self) -> Image.Image | Path:
        return scenes.render_scene(self.image)[0] if isinstance(self.image, int) else self.image


@dataclass(frozen=True)
class Benchmark:
    name: str  # the split, or the JSONL path
    examples: list[Example]
    normalise: Callable[[str], str]  # an answer is right when normalise(output) == normalise(truth)


@dataclass(frozen=True)
class Cell:
    method: str
    n_keep: int  # image tokens the LLM sees (the JSON report calls it "tokens")


@dataclass
class Outcome:
    """One question answered in one cell."""

    cell: Cell
    question: int  # index of the question in the benchmark
    image: int  # index of the image in the benchmark
    type: str
    turn: int  # 0: the question that brought the image; 1, 2, …: follow-ups in the same chat
    correct: float  # 1 right, 0 wrong; `random` averages its seeds
    kappa: float | None  # of the image's kept tokens (None for a follow-up that keeps the first question's)
    times_ms: dict[str, float]  # STAGES
    image_tokens: float | None = None  # image tokens the LLM processed, mean over its layers (PyTorch engine)
    prefill_flops: float | None = None  # the prefill's work (PyTorch engine; torch_llama.py counts it)


# ---- data --------------------------------------------------------------------------------------------

def scenes_benchmark(split: str, n_images: int, questions_per_image: int = 4, seed: int | None = None) -> Benchmark:
    items = scenes.make_split(split, n_images, questions_per_image, seed)
    examples = [Example(item.image_seed, item.question, item.answer, item.type) for item in items]
    return Benchmark(split, examples, scenes.normalise_answer)


def read_jsonl(path: str | Path, n_images: int | None = None) -> Benchmark:
    """{"image", "question", "answer"[, "type"]} per line; relative image paths are relative to the file's
    folder. Answers are matched POPE/GQA-style (normalise_open_answer). n_images keeps the first images."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InputError(f"--data {path}: cannot read it ({error.strerror}); pass a JSONL file") from None
    examples = [_example(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not examples:
        raise InputError(f"--data {path}: no questions in it; expected one JSON object per line")
    if n_images is not None:
        keep = set(list(dict.fromkeys(e.image for e in examples))[:n_images])
        examples = [e for e in examples if e.image in keep]
    return Benchmark(str(path), examples, normalise_open_answer)


def _example(path: Path, number: int, line: str) -> Example:
    try:
        record = json.loads(line)
        image, question, answer = record["image"], record["question"], record["answer"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"--data {path}, line {number}: expected a JSON object with \"image\", \"question\" "
                         f"and \"answer\", got {line[:80]!r}") from None
    image_path = (path.parent / image).resolve()  # an absolute `image` stays as it is
    if not image_path.is_file():
        raise InputError(f"--data {path}, line {number}: image {image_path} not found "
                         "(relative paths start at the JSONL file's folder)")
    return Example(image_path, str(question), str(answer), str(record.get("type", "all")))


_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {word: str(n) for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


def normalise_open_answer(text: str) -> str:
    """POPE/GQA-style: lower case, punctuation and articles dropped, numbers as digits; an answer that
    starts with yes or no is that word ("Yes, there is." -> "yes", "Three." -> "3", "the red one" -> "red one")."""
    words = [_NUMBER_WORDS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _ARTICLES]
    if words and words[0] in ("yes", "no"):
        return words[0]
    return " ".join(words)


# ---- running ---------------------------------------------------------------------------------------------

RANDOM_SEEDS = 3  # `random` is a distribution of masks: each question averages this many, seeded per question


def cells(methods: Iterable[str], budgets: Iterable[int], n_full: int = 576) -> list[Cell]:
    """"full" first, then every other method at every other budget, largest budget first. A budget of
    n_full is the "full" cell itself; a budget out of range is refused by answer_all (check_budget)."""
    pruned = [Cell(m, k) for k in sorted(set(budgets), reverse=True) if k != n_full
              for m in dict.fromkeys(methods) if m != FULL]
    return [Cell(FULL, n_full), *pruned]


def cell_options(base: PipelineOptions, cell: Cell) -> PipelineOptions:
    """The full-token upper bound never prunes inside the encoder."""
    return replace(base, method=cell.method, n_keep=cell.n_keep,
                   acgr_layer=None if cell.method == FULL else base.acgr_layer)


def n_answers(benchmark: Benchmark, todo: list[Cell]) -> int:
    """How many answers evaluate() generates (for a progress bar)."""
    return sum(len(seeds_for(cell)) for cell in todo) * len(benchmark.examples)


def seeds_for(cell: Cell) -> tuple[int, ...]:
    return tuple(range(RANDOM_SEEDS)) if cell.method == "random" else (0,)


def question_seed(question: int, seed: int) -> int:
    """The `random` method's seed for one question and one of its RANDOM_SEEDS draws."""
    return (question * RANDOM_SEEDS + seed + 1) * 0x9E3779B97F4A7C15 % 2**63


def answer_all(pipe: Pipeline, benchmark: Benchmark, todo: list[Cell], *, params: GenerationParams = SHORT_ANSWER,
               conversation: bool = False, progress=None, warm_up: bool = True) -> tuple[list[Outcome], dict]:
    """Every question answered in every cell: the outcomes (in benchmark order within each cell), and the
    vision time per cell and image. With `conversation`, an image's questions are one chat: the first
    brings the image, the others follow up. warm_up=False skips the untimed first answer (for callers that
    only count correct answers)."""
    base = pipe.options
    if not benchmark.examples:
        raise InputError(f"{benchmark.name}: no questions to evaluate; --n must be at least 1")
    for cell in todo:  # bad cells fail here, before any image is encoded
        pipe.check(cell_options(base, cell))
    outcomes, vision_ms = [], {cell: [] for cell in todo}
    try:
        if warm_up:
            _warm_up(pipe, benchmark.examples[0], base, params)
        for index, group in enumerate(by_image(benchmark.examples)):
            image = group[0][1].load()
            encodings: dict[tuple, EncodedImage] = {}  # (ACGR layer, anchors) -> the image at the encoder output
            for cell in todo:
                pipe.configure(cell_options(base, cell))
                encoded = _encoded(pipe, image, encodings)
                vision_ms[cell].append(encoded.timings_ms["vision"])
                outcomes += _answer_image(pipe, encoded, group, cell, index, benchmark.normalise, params,
                                          conversation, progress)
    finally:
        pipe.configure(base)
    return outcomes, vision_ms


def _answer_image(pipe: Pipeline, encoded: EncodedImage, group: list[tuple[int, Example]], cell: Cell, image: int,
                  normalise: Callable[[str], str], params: GenerationParams, conversation: bool,
                  progress) -> list[Outcome]:
    """One image's questions in one cell, each seed of the cell's method once; outcomes averaged over
    the seeds."""
    runs = []
    for seed in seeds_for(cell):
        pipe.configure(replace(pipe.options, seed=question_seed(group[0][0], seed)))
        answers = []
        for turn, (question, example) in enumerate(group):
            if not conversation or turn == 0:
                pipe.new_chat()
            if not conversation:
                pipe.configure(replace(pipe.options, seed=question_seed(question, seed)))
            answers.append(_answer(pipe, encoded if not conversation or turn == 0 else None, example, normalise,
                                   params))
            if progress is not None:
                progress.update()
        runs.append(answers)
    outcomes = []
    for turn, (question, example) in enumerate(group):
        tries = [answers[turn] for answers in runs]
        kappa = next((t["kappa"] for t in tries if t["kappa"] is not None), None)
        times = {stage: float(np.mean([t["times"][stage] for t in tries])) for stage in tries[0]["times"]}
        outcomes.append(Outcome(cell, question, image, example.type, turn if conversation else 0,
                                float(np.mean([t["correct"] for t in tries])), kappa, times,
                                mean_of(t["image_tokens"] for t in tries), mean_of(t["flops"] for t in tries)))
    return outcomes


def _answer(pipe: Pipeline, encoded: EncodedImage | None, example: Example, normalise: Callable[[str], str],
            params: GenerationParams) -> dict:
    turn = pipe.ask(example.question, [] if encoded is None else [encoded], params)
    answer = turn.text()
    pruned = turn.images or turn.repruned  # a follow-up prunes only with --follow-ups reprune
    tokens = pruned[0] if pruned else None
    times = {"prune": tokens.timings_ms["prune"] if tokens else 0.0,
             "project": tokens.timings_ms["project"] if tokens else 0.0,
             "prefill": turn.prefill_ms, "answer": turn.total_ms - turn.prefill_ms}
    per_layer = turn.image_tokens_per_layer
    return {"correct": float(normalise(answer) == normalise(example.answer)),
            "kappa": tokens.selection.kappa if tokens else None, "times": times,
            "image_tokens": float(np.mean(per_layer)) if per_layer else None, "flops": turn.prefill_flops}


def mean_of(values) -> float | None:
    """The mean of the values that are not None (None when all are)."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _warm_up(pipe: Pipeline, example: Example, base: PipelineOptions, params: GenerationParams) -> None:
    """One untimed full-token answer: llama.cpp sizes its compute buffers and PyTorch its kernels on the
    first call, which would otherwise land in the first cell's times."""
    pipe.configure(cell_options(base, Cell(FULL, pipe.vision.cfg.n_patches)))
    pipe.new_chat()
    pipe.ask(example.question, [pipe.encode_image(example.load())], params).text()


def by_image(examples: list[Example]) -> list[list[tuple[int, Example]]]:
    """(question index, example) pairs grouped by image, in benchmark order."""
    groups: dict[int | Path, list[tuple[int, Example]]] = {}
    for question, example in enumerate(examples):
        groups.setdefault(example.image, []).append((question, example))
    return list(groups.values())


def _encoded(pipe: Pipeline, image: Image.Image | Path, encodings: dict) -> EncodedImage:
    """The image through the encoder as the current cell configures it, once per configuration."""
    key = (pipe.acgr_layer, pipe.n_anchors)
    if key not in encodings:
        encodings[key] = pipe.encode_image(image)
    return encodings[key]


