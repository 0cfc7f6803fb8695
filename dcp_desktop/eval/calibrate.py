"""Choose every pruning method's own knobs on the benchmark's validation split (never on test), with the
same effort for each.

    python -m dcp_desktop.eval.calibrate [--model demo] [--n 100] [--tokens 16,32] [--methods …] [--json FILE]

Each method with knobs gets TRIALS evaluations: a method with one knob tries TRIALS values of it; a method
with several (DCP-Prune) runs a coordinate search over its grids, whose sizes add up to TRIALS: from the
current defaults, each knob in turn takes every value of its grid while the others stay fixed, and keeps
the value with the best mean accuracy over the budgets (ties keep the earlier value: the default first).
DivPrune, FasterVLM, random and pool have no knobs. Prints every value tried and each method's choice;
the chosen values are then written into the defaults by hand (the option table in native/methods.cpp, the
one place they live) and checked with `dcp-eval --split test`.

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
from ..cli_options import budgets, method_list, whole_number
from ..errors import InputError, run_command
from ..pipeline import Pipeline, PipelineOptions
from ..prune import DEFAULT_OPTIONS
from . import harness

TRIALS = 24  # evaluations per method with knobs


def _fine_grid(default: float) -> tuple[float, ...]:
    """TRIALS values in [0, 1], evenly spread, the default among them."""
    spread = [round(float(v), 4) for v in np.linspace(0.0, 1.0, TRIALS - 1)]
    if round(default, 4) in spread:
        spread = [round(float(v), 4) for v in np.linspace(0.0, 1.0, TRIALS)]
    return tuple(sorted(set(spread) | {round(default, 4)}))[:TRIALS]


GRIDS = {  # method: {knob: values tried, the default among them}; each method's sizes add up to TRIALS
    "dcp": {
        "acgr_n_neighbors": (1, 2, 4),
        "acgr_spatial_weight": (0.0, 0.25, 0.5, 1.0),
        "acgr_spatial_sigma": (1.0, 2.0, 4.0),
        "tau": (0.0, 0.1, 0.2, 0.3, 0.5, 1e6),  # 1e6: never TATCS, i.e. ACGR alone
        "tatcs_text_weight": (0.0, 0.25, 0.5, 1.0),
        "tatcs_relevance_mix": (0.0, 0.25, 0.5, 1.0),
    },
    "visionzip": {"visionzip_dominant_ratio": _fine_grid(DEFAULT_OPTIONS["visionzip_dominant_ratio"])},
    "cdpruner": {"cdpruner_theta": _fine_grid(DEFAULT_OPTIONS["cdpruner_theta"])},
}


def score(pipe: Pipeline, benchmark: harness.Benchmark, options: PipelineOptions, budgets_: list[int]) -> list[float]:
    """The method's accuracy at each budget under `options`."""
    accuracies = []
    for k in budgets_:
        pipe.configure(replace(options, n_keep=k))
        outcomes, _ = harness.answer_all(pipe, benchmark, [harness.Cell(options.method, k)], warm_up=False)
        accuracies.append(float(np.mean([o.correct for o in outcomes])))
    return accuracies


def search(pipe: Pipeline, benchmark: harness.Benchmark, method: str, budgets_: list[int],
           progress) -> tuple[dict, list[dict]]:
    """The coordinate search for one method; returns its chosen knobs and every trial."""
    grids = GRIDS[method]
    chosen = {name: DEFAULT_OPTIONS[name] for name in grids}
    trials = []
    for name, values in grids.items():
        ordered = sorted(dict.fromkeys(values), key=lambda v: abs(v - chosen[name]) > 1e-3)  # the default first
        results = []
        for i, value in enumerate(ordered):
            options = replace(pipe.options, method=method, prune_options={**chosen, name: value})
            accuracies = score(pipe, benchmark, options, budgets_)
            trials.append({"method": method, "knob": name, "value": value, "accuracy": dict(zip(budgets_, accuracies))})
            results.append((float(np.mean(accuracies)), -i, value))
            progress.update()
        chosen[name] = max(results)[2]  # ties: the earlier value
    return chosen, trials


def table(budgets_: list[int], trials: list[dict], chosen: dict) -> str:
    head = "| method | knob | value | " + " | ".join(f"accuracy at {k}" for k in budgets_) + " | mean |"
    lines = [head, "|" + "---|" * (4 + len(budgets_))]
    for t in trials:
        accuracies = [t["accuracy"][k] for k in budgets_]
        cells = " | ".join(f"{100 * a:.1f}%" for a in accuracies)
        lines.append(f"| {t['method']} | {t['knob']} | {t['value']} | {cells} | {100 * np.mean(accuracies):.1f}% |")
    return "\n".join(lines) + "\n\nchosen: " + json.dumps(chosen)


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.calibrate", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="demo", help="catalog name, LLM .gguf or folder (default demo)")
    parser.add_argument("--n", type=whole_number, default=100, help="validation images (default 100, 4 questions each)")
    parser.add_argument("--tokens", type=budgets, default=[16, 32], help="budgets to optimise (default 16,32)")
    parser.add_argument("--methods", type=method_list, default=list(GRIDS),
                        help=f"methods to calibrate (default {','.join(GRIDS)}: every method with knobs)")
    parser.add_argument("--threads", type=whole_number, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every trial and the choice as JSON")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise InputError(f"--n: expected at least 1 image, got {args.n}")
    without = [m for m in args.methods if m not in GRIDS]
    if without:
        raise InputError(f"--methods: {', '.join(without)} have no knobs to calibrate; choose from {', '.join(GRIDS)}")
    benchmark = harness.scenes_benchmark("validation", args.n)
    options = PipelineOptions(n_threads=args.threads, vision_dtype="float32")
    chosen, trials = {}, []
    with Pipeline(models.resolve(args.model, None), options) as pipe:
        total = sum(len(set(v)) for m in args.methods for v in GRIDS[m].values())
        with tqdm(total=total, unit="trial", desc="calibrate", file=sys.stderr) as bar:
            for method in args.methods:
                chosen[method], method_trials = search(pipe, benchmark, method, args.tokens, bar)
                trials += method_trials
    report = {"model": args.model, "split": "validation", "n": len(benchmark.examples), "tokens": args.tokens,
              "trials_per_method": TRIALS, "chosen": chosen, "trials": trials}
    print(table(args.tokens, trials, chosen))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=1)
    return report


def main(argv: list[str] | None = None) -> None:
    run_command("calibrate", run, argv)


if __name__ == "__main__":
    main()
