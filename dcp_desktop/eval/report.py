"""dcp-eval's report: what the outcomes of harness.answer_all say, as the --json dict, Markdown and a plot.

Per cell (method × budget): accuracy, retention (accuracy / full-token accuracy) overall, per question
type and without the count and size types (which every object-seeking method loses for a reason of its
own: see README), mean κ, stage times, the outcome of every question in benchmark order, and a paired
comparison with `dcp` at the same budget (difference, 95% bootstrap interval, McNemar's p), and on the
PyTorch engine what the LLM did: image tokens per layer (mean over its layers) and prefill FLOPs. Then κ's
Spearman correlation with the per-image accuracy loss within each pruned cell, and its median.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..engine import GenerationParams
from ..errors import InputError
from ..pipeline import Pipeline
from . import harness, stats
from .harness import FULL, STAGES, Benchmark, Cell, Outcome

REFERENCE = "dcp"  # every method is compared with this one, paired on the same questions
HARD_TYPES = ("count", "size")  # shown apart: retention "without count and size"


def evaluate(pipe: Pipeline, benchmark: Benchmark, todo: list[Cell], *,
             params: GenerationParams = harness.SHORT_ANSWER, conversation: bool = False, progress=None) -> dict:
    """Answer every question in every cell (harness.answer_all) and summarise. `progress`: a tqdm-like
    bar, advanced once per answer."""
    outcomes, vision_ms = harness.answer_all(pipe, benchmark, todo, params=params, conversation=conversation,
                                             progress=progress)
    return summarise(pipe, benchmark, todo, outcomes, vision_ms, conversation=conversation)


def summarise(pipe: Pipeline, benchmark: Benchmark, todo: list[Cell], outcomes: list[Outcome],
              vision_ms: dict[Cell, list[float]], *, conversation: bool = False) -> dict:
    """The --json report (see the module docstring)."""
    by_cell = {cell: sorted((o for o in outcomes if o.cell == cell), key=lambda o: o.question) for cell in todo}
    full = by_cell[todo[0]]
    reference = {cell.n_keep: done for cell, done in by_cell.items() if cell.method == REFERENCE}
    results = [_cell_result(cell, done, full, reference.get(cell.n_keep), vision_ms[cell], conversation)
               for cell, done in by_cell.items()]
    options = pipe.options
    return {"model": pipe.info.name, "split": benchmark.name, "n": len(benchmark.examples),
            "n_images": len(vision_ms[todo[0]]), "acgr_layer": options.acgr_layer, "positions": options.positions,
            "vision_dtype": options.vision_dtype, "engine": options.engine, "mass_bias": options.mass_bias,
            "conversation": conversation, "follow_ups": options.follow_ups,
            "question_types": [o.type for o in full], "turns": [o.turn for o in full], "full_accuracy": _accuracy(full), "results": results,
            "kappa_accuracy_spearman": kappa_loss_spearman(by_cell),
            "kappa_spearman_per_cell": kappa_spearman_per_cell(by_cell)}


def _cell_result(cell: Cell, done: list[Outcome], full: list[Outcome], reference: list[Outcome] | None,
                 vision_ms: list[float], conversation: bool) -> dict:
    types = sorted({o.type for o in done})
    kappas = [o.kappa for o in done if o.kappa is not None]
    result = {"method": cell.method, "tokens": cell.n_keep, "accuracy": _accuracy(done),
              "retention": _ratio(_accuracy(done), _accuracy(full)),
              "retention_without_count_size": _ratio(_accuracy(_easy(done)), _accuracy(_easy(full))),
              "kappa_mean": float(np.mean(kappas)) if kappas else None,
              "by_type": {kind: _accuracy([o for o in done if o.type == kind]) for kind in types},
              "retention_by_type": {kind: _ratio(_accuracy([o for o in done if o.type == kind]),
                                                 _accuracy([o for o in full if o.type == kind])) for kind in types},
              "time_ms": {"vision": float(np.mean(vision_ms)),
                          **{stage: float(np.mean([o.times_ms[stage] for o in done])) for stage in STAGES}},
              "image_tokens_mean_over_layers": harness.mean_of(o.image_tokens for o in done),
              "prefill_mflops": _scaled(harness.mean_of(o.prefill_flops for o in done), 1e-6),
              "outcomes": [round(o.correct, 4) for o in done],
              "paired_vs_dcp": None}
    if conversation:
        result["first_accuracy"] = _accuracy([o for o in done if o.turn == 0])
        result["follow_up_accuracy"] = _accuracy([o for o in done if o.turn > 0])
    if reference is not None and cell.method != REFERENCE:
        ours, theirs = [o.correct for o in reference], [o.correct for o in done]
        diff, interval = stats.paired_difference(ours, theirs)
        result["paired_vs_dcp"] = {"diff": diff, "ci95": list(interval), "mcnemar_p": stats.mcnemar_p(ours, theirs)}
    return result


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _easy(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.type not in HARD_TYPES]


def _accuracy(outcomes: list[Outcome]) -> float:
    return float(np.mean([o.correct for o in outcomes])) if outcomes else float("nan")


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole and not np.isnan(whole) and not np.isnan(part) else None


# ---- κ against accuracy loss ------------------------------------------------------------------------------

def _losses_and_kappas(full: list[Outcome], done: list[Outcome]) -> tuple[list[float], list[float]]:
    """Per image: its mean κ in the cell, and its full-token accuracy minus its accuracy in the cell."""
    full_by_image = _per_image(full, lambda o: o.correct)
    correct = _per_image(done, lambda o: o.correct)
    kappa = _per_image([o for o in done if o.kappa is not None], lambda o: o.kappa)
    images = [image for image in correct if image in kappa]
    return [kappa[i] for i in images], [full_by_image[i] - correct[i] for i in images]


def kappa_loss_spearman(by_cell: dict[Cell, list[Outcome]]) -> float | None:
    """Spearman's ρ between κ and accuracy loss, one point per (pruned cell, image), every cell pooled."""
    full = next(done for cell, done in by_cell.items() if cell.method == FULL)
    kappas, losses = [], []
    for cell, done in by_cell.items():
        if cell.method != FULL:
            k, loss = _losses_and_kappas(full, done)
            kappas += k
            losses += loss
    return stats.spearman(kappas, losses)


def kappa_spearman_per_cell(by_cell: dict[Cell, list[Outcome]]) -> dict:
    """ρ(κ, per-image accuracy loss) within each pruned cell (one method at one budget, images as
    points: what κ must predict to choose between keeping ACGR's tokens and re-selecting), and the
    median over the cells where it is defined."""
    full = next(done for cell, done in by_cell.items() if cell.method == FULL)
    per_cell = {f"{cell.method}@{cell.n_keep}": stats.spearman(*_losses_and_kappas(full, done))
                for cell, done in by_cell.items() if cell.method != FULL}
    defined = [rho for rho in per_cell.values() if rho is not None]
    return {"cells": per_cell, "median": float(np.median(defined)) if defined else None}


def _per_image(outcomes: list[Outcome], value) -> dict[int, float]:
    values: dict[int, list[float]] = {}
    for o in outcomes:
        values.setdefault(o.image, []).append(float(value(o)))
    return {image: float(np.mean(v)) for image, v in values.items()}


# ---- Markdown ------------------------------------------------------------------------------------------

def table(report: dict) -> str:
    """Markdown: the retention grid, dcp against every method (paired), retention per type, every cell."""
    pruned = [r for r in report["results"] if r["method"] != FULL]
    parts = [_heading(report)]
    if pruned:
        parts += [_grid(report, "retention", "retention"),
                  _grid(report, "retention without count and size", "retention_without_count_size")]
        if any(r["paired_vs_dcp"] for r in pruned):
            parts.append(_paired_grid(report))
        if any(r.get("prefill_mflops") is not None for r in report["results"]):
            parts.append(_cost_grid(report))
        parts.append(_types_table(report))
    return "\n\n".join([*parts, _detail(report)])


def _heading(report: dict) -> str:
    rho, per_cell = report["kappa_accuracy_spearman"], report["kappa_spearman_per_cell"]["median"]
    acgr = f", in-encoder ACGR after block {report['acgr_layer']}" if report["acgr_layer"] else ""
    packed = ", kept rows packed (--positions packed)" if report.get("positions") == "packed" else ""
    chat = ", each image's questions as one conversation" if report.get("conversation") else ""
    chat += " (follow-ups re-pruned)" if report.get("conversation") and report.get("follow_ups") == "reprune" else ""
    chat += ", mass bias on" if report.get("mass_bias") else ""
    return (f"model {report['model']}, {report['split']}: {report['n']} questions on {report['n_images']} images"
            f"{acgr}{packed}{chat}; vision {report['vision_dtype']}, LLM on {report['engine']}; full-token accuracy "
            f"{_percent(report['full_accuracy'])}; Spearman ρ(κ, per-image accuracy loss): median over cells "
            f"{_number(per_cell)}, all cells pooled {_number(rho)}")


def _budgets_and_methods(report: dict) -> tuple[list[int], list[str], dict]:
    pruned = [r for r in report["results"] if r["method"] != FULL]
    budgets = sorted({r["tokens"] for r in pruned}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in pruned))
    return budgets, methods, {(r["method"], r["tokens"]): r for r in pruned}


def _grid(report: dict, title: str, key: str) -> str:
    budgets, methods, cell = _budgets_and_methods(report)
    lines = [f"| {title} | " + " | ".join(f"{k} tokens" for k in budgets) + " |", "|---|" + "---|" * len(budgets)]
    lines += [f"| {m} | " + " | ".join(_percent((cell.get((m, k)) or {}).get(key)) for k in budgets) + " |"
              for m in methods]
    return "\n".join(lines)


def _paired_grid(report: dict) -> str:
    budgets, methods, cell = _budgets_and_methods(report)
    lines = ["| method − dcp, accuracy points [95% CI] (McNemar p) | " + " | ".join(f"{k} tokens" for k in budgets)
             + " |", "|---|" + "---|" * len(budgets)]
    for m in methods:
        if m != REFERENCE:
            lines.append(f"| {m} | " + " | ".join(_paired((cell.get((m, k)) or {}).get("paired_vs_dcp"))
                                                  for k in budgets) + " |")
    return "\n".join(lines)


def _cost_grid(report: dict) -> str:
    """What each cell costs the LLM (in-LLM methods process more image tokens in early layers)."""
    budgets, methods, cell = _budgets_and_methods(report)
    full = report["results"][0]
    heads = " | ".join(f"{k} tokens" for k in budgets)
    lines = [f"| image tokens per layer (mean) · prefill MFLOPs · prefill ms | {heads} |",
             "|---|" + "---|" * len(budgets), f"| {FULL} | " + " | ".join([_cost(full)] * len(budgets)) + " |"]
    lines += [f"| {m} | " + " | ".join(_cost(cell.get((m, k))) for k in budgets) + " |" for m in methods]
    return "\n".join(lines)


def _cost(result: dict | None) -> str:
    if not result:
        return "–"
    tokens, mflops = result.get("image_tokens_mean_over_layers"), result.get("prefill_mflops")
    return f"{_number(tokens, '.0f')} · {_number(mflops, '.0f')} · {result['time_ms']['prefill']:.1f}"


def _paired(paired: dict | None) -> str:
    if not paired:
        return "–"
    low, high = paired["ci95"]
    return f"{100 * paired['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] (p {paired['mcnemar_p']:.2g})"


def _types_table(report: dict) -> str:
    types = sorted({kind for r in report["results"] for kind in r["retention_by_type"]})
    lines = ["| retention by type | tokens | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
    for r in report["results"]:
        if r["method"] != FULL:
            lines.append(f"| {r['method']} | {r['tokens']} | "
                         + " | ".join(_percent(r["retention_by_type"].get(t)) for t in types) + " |")
    return "\n".join(lines)


def _detail(report: dict) -> str:
    types = sorted({kind for r in report["results"] for kind in r["by_type"]})
    follow = report.get("conversation")
    lines = ["| method | tokens | accuracy | retention | κ mean | " + " | ".join(types)
             + (" | first question | follow-ups" if follow else "")
             + " | vision ms/image | " + " | ".join(f"{s} ms" for s in STAGES)
             + " | image tokens per layer | prefill MFLOPs |",
             "|---|" + "---|" * (7 + len(types) + (2 if follow else 0) + len(STAGES))]
    for r in report["results"]:
        extra = f" | {_percent(r['first_accuracy'])} | {_percent(r['follow_up_accuracy'])}" if follow else ""
        lines.append(f"| {r['method']} | {r['tokens']} | {_percent(r['accuracy'])} | {_percent(r['retention'])} | "
                     f"{_number(r['kappa_mean'])} | " + " | ".join(_percent(r["by_type"].get(t)) for t in types)
                     + extra + f" | {r['time_ms']['vision']:.1f} | "
                     + " | ".join(f"{r['time_ms'][s]:.2f}" for s in STAGES)
                     + f" | {_number(r.get('image_tokens_mean_over_layers'), '.1f')}"
                     + f" | {_number(r.get('prefill_mflops'), '.1f')} |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}%"


def _number(value: float | None, form: str = ".3f") -> str:
    return "n/a" if value is None else f"{value:{form}}"


# ---- plot --------------------------------------------------------------------------------------------

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


def write_json(path: str | Path, report: dict) -> None:
    """A tool's report as indented JSON (every eval tool's --json FILE)."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=1)
