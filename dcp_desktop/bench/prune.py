"""`dcp-bench prune`: the pruning core's speed, native C++ vs its NumPy twin vs PyTorch, in one run.

Inputs are random (time does not depend on values): N = 576 tokens on a 24×24 grid, D = 1024
(ViT-L features) and 4096 (LLM width), K ∈ {64, 32, 16}, a 12-token question. Each cell is the
median of `repeats` calls of the core function itself (no argument checks). The native core is
single-threaded; NumPy uses its BLAS threads; PyTorch runs once with 1 thread and once with all.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import torch

from .. import _native, prune_reference
from ..prune import DEFAULT_OPTIONS, METHODS
from . import torch_dcp
from .machine import machine

N, GRID, N_TEXT = 576, 24, 12
WIDTHS, BUDGETS = (1024, 4096), (64, 32, 16)


def inputs(d: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(N) * 2
    return {"features": rng.standard_normal((N, d)).astype(np.float32),
            "cls_attn": (np.exp(logits) / np.exp(logits).sum()).astype(np.float32),
            "keys": rng.standard_normal((N, d)).astype(np.float32),
            "text": rng.standard_normal((N_TEXT, d)).astype(np.float32)}


def median_ms(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def time_cell(method: str, d: int, k: int, repeats: int) -> list[dict]:
    x = inputs(d)
    args = (x["features"], x["cls_attn"], x["keys"], None, None, x["text"], GRID, GRID, k, method, 0, DEFAULT_OPTIONS)
    rows = [{"impl": "native", "threads": 1, "median_ms": median_ms(lambda: _native.prune(*args), repeats)},
            {"impl": "numpy", "threads": os.cpu_count(),
             "median_ms": median_ms(lambda: prune_reference.prune(*args), max(3, repeats // 10))}]
    if method == "dcp":
        t = {name: torch.from_numpy(value) for name, value in x.items()}
        for threads in sorted({1, os.cpu_count()}):
            torch.set_num_threads(threads)
            call = lambda: torch_dcp.dcp(t["features"], t["cls_attn"], t["keys"], t["text"], GRID, k,  # noqa: E731
                                         DEFAULT_OPTIONS)
            rows.append({"impl": "torch", "threads": threads, "median_ms": median_ms(call, max(5, repeats // 4))})
    return [{"method": method, "n": N, "d": d, "k": k, **row} for row in rows]


def cells(methods=tuple(m for m in METHODS if m != "full")) -> list[tuple[str, int, int]]:
    return [(m, d, k) for d in WIDTHS for k in BUDGETS for m in methods]


def run(todo: list[tuple[str, int, int]], repeats: int = 50) -> dict:
    """Time every (method, D, K) cell of `todo` (any iterable, e.g. wrapped in a progress bar)."""
    results = [row for method, d, k in todo for row in time_cell(method, d, k, repeats)]
    return {"machine": machine(), "results": results}


def table(report: dict) -> str:
    """Markdown: one row per method × D × K, with the NumPy and PyTorch ratios to native."""
    by_cell: dict[tuple, dict] = {}
    for r in report["results"]:
        by_cell.setdefault((r["method"], r["d"], r["k"]), {})[(r["impl"], r["threads"])] = r["median_ms"]
    lines = ["| method | D | K | native ms (1 thread) | NumPy ms | NumPy / native | PyTorch 1 thread ms | "
             "PyTorch all threads ms | PyTorch / native (best) |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, d, k), times in by_cell.items():
        native = times[("native", 1)]
        numpy_ms = next(v for (impl, _), v in times.items() if impl == "numpy")
        torch_times = sorted((thr, v) for (impl, thr), v in times.items() if impl == "torch")
        t1 = f"{torch_times[0][1]:.2f}" if torch_times else "–"
        tall = f"{torch_times[-1][1]:.2f}" if torch_times else "–"
        ratio = f"{min(v for _, v in torch_times) / native:.1f}×" if torch_times else "–"
        lines.append(f"| {method} | {d} | {k} | {native:.3f} | {numpy_ms:.2f} | {numpy_ms / native:.0f}× | "
                     f"{t1} | {tall} | {ratio} |")
    return "\n".join(lines)


def main(args) -> None:
    from tqdm import tqdm

    report = run(tqdm(cells(), unit="cell", desc="dcp-bench prune", disable=args.json), args.repeats)
    print(json.dumps(report, indent=1) if args.json else f"machine: {report['machine']}\n\n{table(report)}")
