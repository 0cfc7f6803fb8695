"""dcp-eval's core: accuracy, κ and time of every pruning method × token budget on one loaded model.

    benchmark = scenes_benchmark("test", n_images=100)      or   read_jsonl("my.jsonl")
    report = evaluate(pipe, benchmark, cells(methods, budgets))   -> dict (the --json schema)
    print(table(report))                                          -> Markdown
    plot(report, "accuracy.png")                                  -> PNG (needs matplotlib)

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

from ..engine import GenerationParams
from ..errors import InputError
from ..pipeline import EncodedImage, Pipeline, PipelineOptions, check_budget
from .. import scenes

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
    image: int  # index of the image in the benchmark
    type: str
    correct: bool
    kappa: float
    times_ms: dict[str, float]  # STAGES


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


def evaluate(pipe: Pipeline, benchmark: Benchmark, todo: list[Cell], *,
             params: GenerationParams = SHORT_ANSWER, progress=None) -> dict:
    """Answer every question in every cell; the report (see summarise). `progress`: a tqdm-like bar,
    advanced once per answered question."""
    outcomes, vision_ms = answer_all(pipe, benchmark, todo, params=params, progress=progress)
    return summarise(pipe.info.name, benchmark, todo, outcomes, vision_ms, pipe.options.acgr_layer,
                     pipe.options.positions)


def answer_all(pipe: Pipeline, benchmark: Benchmark, todo: list[Cell], *, params: GenerationParams = SHORT_ANSWER,
               progress=None, warm_up: bool = True) -> tuple[list[Outcome], dict]:
    """Every question answered in every cell: the outcomes, and the vision time per cell and image.
    warm_up=False skips the untimed first answer (for callers that only count correct answers)."""
    base = pipe.options
    if not benchmark.examples:
        raise InputError(f"{benchmark.name}: no questions to evaluate; --n must be at least 1")
    for cell in todo:  # bad cells fail here, before any image is encoded
        check_budget(cell_options(base, cell), pipe.vision.cfg)
    outcomes, vision_ms = [], {cell: [] for cell in todo}
    try:
        if warm_up:
            _warm_up(pipe, benchmark.examples[0], base, params)
        for index, group in enumerate(_by_image(benchmark.examples)):
            image = group[0].load()
            encodings: dict[tuple, EncodedImage] = {}  # (ACGR layer, anchors) -> the image at the encoder output
            for cell in todo:
                pipe.configure(cell_options(base, cell))
                encoded = _encoded(pipe, image, encodings)
                vision_ms[cell].append(encoded.timings_ms["vision"])
                for example in group:
                    outcomes.append(_answer(pipe, encoded, example, cell, index, benchmark.normalise, params))
                    if progress is not None:
                        progress.update()
    finally:
        pipe.configure(base)
    return outcomes, vision_ms


def _warm_up(pipe: Pipeline, example: Example, base: PipelineOptions, params: GenerationParams) -> None:
    """One untimed full-token answer: llama.cpp sizes its compute buffers and PyTorch its kernels on the
    first call, which would otherwise land in the first cell's times."""
    pipe.configure(cell_options(base, Cell(FULL, pipe.vision.cfg.n_patches)))
    pipe.new_chat()
    pipe.ask(example.question, [pipe.encode_image(example.load())], params).text()


def _by_image(examples: list[Example]) -> list[list[Example]]:
    groups: dict[int | Path, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.image, []).append(example)
    return list(groups.values())


def _encoded(pipe: Pipeline, image: Image.Image | Path, encodings: dict) -> EncodedImage:
    """The image through the encoder as the current cell configures it, once per configuration."""
    key = (pipe.acgr_layer, pipe.n_anchors)
    if key not in encodings:
        encodings[key] = pipe.encode_image(image)
    return encodings[key]


def _answer(pipe: Pipeline, encoded: EncodedImage, example: Example, cell: Cell, image: int,
            normalise: Callable[[str], str], params: GenerationParams) -> Outcome:
    pipe.new_chat()
    turn = pipe.ask(example.question, [encoded], params)
    answer = turn.text()
    tokens = turn.images[0]
    times = {"prune": tokens.timings_ms["prune"], "project": tokens.timings_ms["project"],
             "prefill": turn.prefill_ms, "answer": turn.total_ms - turn.prefill_ms}
    return Outcome(cell, image, example.type, normalise(answer) == normalise(example.answer),
                   tokens.selection.kappa, times)


# ---- the report ----------------------------------------------------------------------------------------

def summarise(model: str, benchmark: Benchmark, todo: list[Cell], outcomes: list[Outcome],
              vision_ms: dict[Cell, list[float]], acgr_layer: int | None, positions: str) -> dict:
    """The --json report: accuracy, retention, mean κ, per-type accuracy and stage times per cell, and
    the Spearman correlation of κ with the per-image accuracy loss."""
    by_cell = {cell: [o for o in outcomes if o.cell == cell] for cell in todo}
    full_accuracy = _accuracy(by_cell[todo[0]])
    results = [{"method": cell.method, "tokens": cell.n_keep, "accuracy": _accuracy(done),
                "retention": _accuracy(done) / full_accuracy if full_accuracy else None,
                "kappa_mean": float(np.mean([o.kappa for o in done])),
                "by_type": {kind: _accuracy([o for o in done if o.type == kind])
                            for kind in sorted({o.type for o in done})},
                "time_ms": {"vision": float(np.mean(vision_ms[cell])),
                            **{stage: float(np.mean([o.times_ms[stage] for o in done])) for stage in STAGES}}}
               for cell, done in by_cell.items()]
    return {"model": model, "split": benchmark.name, "n": len(benchmark.examples),
            "n_images": len(vision_ms[todo[0]]), "acgr_layer": acgr_layer, "positions": positions,
            "full_accuracy": full_accuracy,
            "results": results, "kappa_accuracy_spearman": kappa_loss_spearman(by_cell)}


def _accuracy(outcomes: list[Outcome]) -> float:
    return float(np.mean([o.correct for o in outcomes])) if outcomes else float("nan")


def kappa_loss_spearman(by_cell: dict[Cell, list[Outcome]]) -> float | None:
    """Spearman's ρ between κ and accuracy loss, one point per (pruned cell, image): the image's mean κ
    in the cell, and its full-token accuracy minus its accuracy in the cell. None when undefined."""
    full = next(done for cell, done in by_cell.items() if cell.method == FULL)
    full_by_image = _per_image(full, lambda o: o.correct)
    kappas, losses = [], []
    for cell, done in by_cell.items():
        if cell.method == FULL:
            continue
        correct, kappa = _per_image(done, lambda o: o.correct), _per_image(done, lambda o: o.kappa)
        for image in correct:
            kappas.append(kappa[image])
            losses.append(full_by_image[image] - correct[image])
    return spearman(kappas, losses)


def _per_image(outcomes: list[Outcome], value: Callable[[Outcome], float]) -> dict[int, float]:
    values: dict[int, list[float]] = {}
    for o in outcomes:
        values.setdefault(o.image, []).append(float(value(o)))
    return {image: float(np.mean(v)) for image, v in values.items()}


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (ties get their mean rank, as scipy.stats.spearmanr); None when
    either side is constant or there are fewer than 3 points. (NumPy: scipy is no dependency.)"""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, group, count = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / count)[group]  # tied values share their mean rank


def table(report: dict) -> str:
    """Markdown: a retention grid (methods × budgets, like the paper's table), then every cell in full."""
    grid = [_retention_grid(report)] if any(r["method"] != FULL for r in report["results"]) else []
    return "\n\n".join([_heading(report), *grid, _detail(report)])


def _heading(report: dict) -> str:
    rho = report["kappa_accuracy_spearman"]
    acgr = f", in-encoder ACGR after block {report['acgr_layer']}" if report["acgr_layer"] else ""
    packed = ", kept rows packed (--positions packed)" if report.get("positions") == "packed" else ""
    return (f"model {report['model']}, {report['split']}: {report['n']} questions on {report['n_images']} images"
            f"{acgr}{packed}; full-token accuracy {_percent(report['full_accuracy'])}; "
            f"Spearman ρ(κ, accuracy loss) {'n/a' if rho is None else f'{rho:.3f}'}")


def _retention_grid(report: dict) -> str:
    pruned = [r for r in report["results"] if r["method"] != FULL]
    budgets = sorted({r["tokens"] for r in pruned}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in pruned))
    cell = {(r["method"], r["tokens"]): r["retention"] for r in pruned}
    lines = ["| retention | " + " | ".join(f"{k} tokens" for k in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    lines += [f"| {m} | " + " | ".join(_percent(cell.get((m, k))) for k in budgets) + " |" for m in methods]
    return "\n".join(lines)


def _detail(report: dict) -> str:
    types = sorted({kind for r in report["results"] for kind in r["by_type"]})
    lines = ["| method | tokens | accuracy | retention | κ mean | " + " | ".join(types)
             + " | vision ms/image | " + " | ".join(f"{s} ms" for s in STAGES) + " |",
             "|---|" + "---|" * (5 + len(types) + len(STAGES))]
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['tokens']} | {_percent(r['accuracy'])} | {_percent(r['retention'])} | "
                     f"{r['kappa_mean']:.3f} | " + " | ".join(_percent(r["by_type"].get(t)) for t in types)
                     + f" | {r['time_ms']['vision']:.1f} | "
                     + " | ".join(f"{r['time_ms'][s]:.2f}" for s in STAGES) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}%"


def pyplot():
    """matplotlib.pyplot on a file-only backend; an InputError naming the package when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("--plot: needs matplotlib, which is not installed; `pip install matplotlib` "
                         "or drop --plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(report: dict, path: str | Path) -> None:
    """Accuracy against image tokens (log scale), one line per method; full-token accuracy dashed."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    pruned = [r for r in report["results"] if r["method"] != FULL]
    for method in dict.fromkeys(r["method"] for r in pruned):
        points = sorted((r["tokens"], r["accuracy"]) for r in pruned if r["method"] == method)
        axes.plot(*zip(*points), marker="o", label=method)
    axes.axhline(report["full_accuracy"], linestyle="--", color="grey", label="full (576 tokens)")
    axes.set_xscale("log", base=2)
    axes.set(xlabel="image tokens", ylabel="accuracy", title=f"{report['model']} on {report['split']}")
    axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
