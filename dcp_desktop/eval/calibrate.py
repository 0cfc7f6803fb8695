"""Choose DCP-Prune's knobs on the benchmark's validation split (never on test).

    python -m dcp_desktop.eval.calibrate [--model demo] [--n 100] [--tokens 16,32] [--json FILE]

Coordinate search: starting from the current defaults, each knob in turn is set to every value of its
grid while the others stay fixed, and keeps the value with the best mean accuracy of `dcp` over the
budgets (ties keep the earlier value: the default first). The encoder knobs come last: the ViT block
after which ACGR prunes inside the encoder (or none), then the anchors it keeps as a multiple of K.
Prints every value tried and the chosen set; the chosen values are then written into the defaults by hand
(the option table in native/methods.cpp, the one place they live) and checked with `dcp-eval --split test`.

With 100 images × 4 questions an accuracy near 80% has a 95% interval of about ±4 points, so one pass over
the grids is a coarse choice, not a fine optimum.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from .. import models
from ..cli_options import budgets, whole_number
from ..errors import InputError, run_command
from ..pipeline import Pipeline, PipelineOptions
from ..prune import DEFAULT_OPTIONS
from . import harness

METHOD = "dcp"
GRIDS = {  # option: values tried, the default among them
    "acgr_n_neighbors": (1, 2, 3, 4),
    "acgr_spatial_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
    "acgr_spatial_sigma": (1.0, 2.0, 4.0),
    "tatcs_text_weight": (0.0, 0.25, 0.5, 1.0),
    "tatcs_relevance_mix": (0.0, 0.25, 0.5, 0.75, 1.0),
    "tau": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 1e6),  # 1e6: never TATCS, i.e. ACGR alone
}
ANCHOR_FACTORS = (2, 4, 8)  # in-encoder anchors M = factor · K


def score(pipe: Pipeline, benchmark: harness.Benchmark, options: PipelineOptions, budgets: list[int],
          anchor_factor: int | None) -> list[float]:
    """dcp's accuracy at each budget under `options` (anchors = factor · K when given)."""
    accuracies = []
    for k in budgets:
        pipe.configure(replace(options, acgr_anchors=anchor_factor * k if anchor_factor else None))
        outcomes, _ = harness.answer_all(pipe, benchmark, [harness.Cell(METHOD, k)], warm_up=False)
        accuracies.append(float(np.mean([o.correct for o in outcomes])))
    return accuracies


def search(pipe: Pipeline, benchmark: harness.Benchmark, budgets: list[int], progress) -> tuple[dict, list[dict]]:
    """The coordinate search; returns the chosen settings and every trial."""
    chosen = {"prune_options": {name: DEFAULT_OPTIONS[name] for name in GRIDS}, "acgr_layer": None,
              "anchor_factor": None}
    trials = []

    def trial(knob: str, value, settings: dict) -> float:
        options = replace(pipe.options, method=METHOD, prune_options=settings["prune_options"],
                          acgr_layer=settings["acgr_layer"])
        accuracies = score(pipe, benchmark, options, budgets, settings["anchor_factor"])
        trials.append({"knob": knob, "value": value, "accuracy": dict(zip(budgets, accuracies))})
        progress.update()
        return float(np.mean(accuracies))

    def coordinate(knob: str, values, settings_for) -> None:
        results = [(trial(knob, value, settings_for(value)), -i, value) for i, value in enumerate(values)]
        best = max(results)[2]  # ties: the earlier value
        chosen.update(settings_for(best))

    for name, values in GRIDS.items():
        ordered = sorted(values, key=lambda v: v != chosen["prune_options"][name])  # the current value first
        coordinate(name, ordered, lambda v: {**chosen, "prune_options": {**chosen["prune_options"], name: v}})
    layers = [None, *range(1, pipe.vision.cfg.n_blocks)]
    coordinate("acgr_layer", layers, lambda layer: {**chosen, "acgr_layer": layer})
    if chosen["acgr_layer"] is not None:
        coordinate("anchor_factor", ANCHOR_FACTORS, lambda f: {**chosen, "anchor_factor": f})
    return chosen, trials


def n_trials(n_blocks: int) -> int:
    return sum(map(len, GRIDS.values())) + n_blocks + len(ANCHOR_FACTORS)


def table(budgets: list[int], trials: list[dict], chosen: dict) -> str:
    head = "| knob | value | " + " | ".join(f"accuracy at {k}" for k in budgets) + " | mean |"
    lines = [head, "|" + "---|" * (3 + len(budgets))]
    for t in trials:
        accuracies = [t["accuracy"][k] for k in budgets]
        cells = " | ".join(f"{100 * a:.1f}%" for a in accuracies)
        lines.append(f"| {t['knob']} | {t['value']} | {cells} | {100 * np.mean(accuracies):.1f}% |")
    return "\n".join(lines) + "\n\nchosen: " + json.dumps(chosen)


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.calibrate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="demo", help="catalog name, LLM .gguf or folder (default demo)")
    parser.add_argument("--n", type=whole_number, default=100, help="validation images (default 100, 4 questions each)")
    parser.add_argument("--tokens", type=budgets, default=[16, 32], help="budgets to optimise (default 16,32)")
    parser.add_argument("--threads", type=whole_number, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every trial and the choice as JSON")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise InputError(f"--n: expected at least 1 image, got {args.n}")
    benchmark = harness.scenes_benchmark("validation", args.n)
    with Pipeline(models.resolve(args.model, None), PipelineOptions(n_threads=args.threads)) as pipe:
        with tqdm(total=n_trials(pipe.vision.cfg.n_blocks), unit="trial", desc="calibrate", file=sys.stderr) as bar:
            chosen, trials = search(pipe, benchmark, args.tokens, bar)
    report = {"model": args.model, "split": "validation", "n": len(benchmark.examples), "tokens": args.tokens,
              "chosen": chosen, "trials": trials}
    print(table(args.tokens, trials, chosen))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)
    return report


def main(argv: list[str] | None = None) -> None:
    run_command("calibrate", run, argv)


if __name__ == "__main__":
    main()
