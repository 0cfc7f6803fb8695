"""Can BTP run in the desktop app? The measurement behind the answer (docs/results/inllm-test.md).

The app's LLM is llama.cpp, which runs every layer on every cell it holds: it cannot drop image tokens
between layers. What a first pass could do (llama.cpp's eval callback reads the attention and stops the
graph early) is find the tokens BTP would keep, so that the answer's prefill gets only those K rows. This
measures the best such pass, on the PyTorch engine (whose logits match llama.cpp's): BTP's own choice of
K patches, exactly as the faithful run makes it, given to the LLM before its first layer (at their grid
positions, no attention bias), against the faithful run where the early layers still see all 576 rows.
A pass inside llama.cpp could not even make BTP's exact choice past its first stage: the second stage
ranks tokens whose states, in the faithful run, come from layers that no longer saw the pruned rows.

Per budget: both accuracies on the same questions (paired difference, bootstrap interval, McNemar's p),
and the prefill work: the faithful run's, the first pass's (the layers up to BTP's last stage, on the
full image, then nothing), and the K-row prefill's.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..engine import ImageRows
from ..inllm.hook import StagePruner
from ..pipeline import EncodedImage, Pipeline
from . import harness, stats


class _FirstPass(StagePruner):
    """BTP's stages, and nothing after the last one: all a first pass computes to know the survivors."""

    def after_layer(self, layer, batch):
        edited = super().after_layer(layer, batch)
        if len(self.kept) == self.schedule.n_stages and layer == self.schedule.layers[-1]:
            return batch.take(torch.zeros(0, dtype=torch.long))
        return edited


def compare(pipe: Pipeline, benchmark: harness.Benchmark, budgets: list[int], progress=None) -> dict:
    """{budget: summary} for faithful BTP against its choice given before the LLM (pipe's BTP knobs)."""
    base, results = pipe.options, {}
    try:
        for k in budgets:
            pipe.configure(replace(base, method="btp", n_keep=k))
            runs = []
            for group in harness.by_image(benchmark.examples):
                encoded = pipe.encode_image(group[0][1].load())
                for _, example in group:
                    runs.append(_both(pipe, encoded, example, benchmark.normalise))
                    if progress is not None:
                        progress.update()
            results[k] = _summary(runs)
    finally:
        pipe.configure(base)
    return results


def _both(pipe: Pipeline, encoded: EncodedImage, example: harness.Example, normalise) -> dict:
    pipe.new_chat()
    turn = pipe.ask(example.question, [encoded], harness.SHORT_ANSWER)
    faithful = normalise(turn.text()) == normalise(example.answer)
    kept = turn.hooks.kept[-1]  # (K,) grid patches, ascending
    full = turn.images[0].rows("grid")
    first = pipe.pruner(pipe.options, pipe.n_keep)
    first_pass = _prefill(pipe, example.question, full, _FirstPass(first.method, first.schedule, n_full=first.n_full,
                                                                    grid_width=first.grid_width))
    before = ImageRows(full.embeddings[kept], kept, full.n_grid)
    k_rows = _prefill(pipe, example.question, before, None)
    answer = "".join(pipe.engine.generate(harness.SHORT_ANSWER))
    return {"faithful": float(faithful), "before": float(normalise(answer) == normalise(example.answer)),
            "faithful_flops": turn.prefill_flops, "faithful_ms": turn.prefill_ms,
            "first_pass_flops": first_pass[0], "first_pass_ms": first_pass[1],
            "k_rows_flops": k_rows[0], "k_rows_ms": k_rows[1]}


def _prefill(pipe: Pipeline, question: str, rows: ImageRows, hooks) -> tuple[float, float]:
    """A fresh chat's user turn; its FLOPs and milliseconds."""
    pipe.new_chat()
    flops, start = pipe.engine.llama.flops, time.perf_counter()
    pipe.engine.add_user_turn(question, [rows], hooks)
    return float(pipe.engine.llama.flops - flops), (time.perf_counter() - start) * 1000.0


def _summary(runs: list[dict]) -> dict:
    faithful, before = [r["faithful"] for r in runs], [r["before"] for r in runs]
    diff, interval = stats.paired_difference(faithful, before)
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0] if key not in ("faithful", "before")}
    return {"n": len(runs), "faithful_accuracy": float(np.mean(faithful)), "before_accuracy": float(np.mean(before)),
            "diff": diff, "ci95": list(interval), "mcnemar_p": stats.mcnemar_p(faithful, before), **mean}


def table(results: dict) -> str:
    lines = ["| tokens | faithful BTP | its K patches before the LLM | difference [95% CI] (McNemar p) | "
             "prefill MFLOPs: faithful · first pass + K rows | prefill ms: faithful · first pass + K rows |",
             "|---|---|---|---|---|---|"]
    for k, r in results.items():
        low, high = r["ci95"]
        lines.append(f"| {k} | {100 * r['faithful_accuracy']:.1f}% | {100 * r['before_accuracy']:.1f}% | "
                     f"{100 * r['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] (p {r['mcnemar_p']:.2g}) | "
                     f"{r['faithful_flops'] / 1e6:.0f} · {r['first_pass_flops'] / 1e6:.0f} + "
                     f"{r['k_rows_flops'] / 1e6:.0f} | {r['faithful_ms']:.1f} · {r['first_pass_ms']:.1f} + "
                     f"{r['k_rows_ms']:.1f} |")
    return "\n".join(lines)
