"""The in-LLM pruning results in one command: choose the in-LLM methods' knobs on validation, measure whether
BTP could run in the app, then every method on the test split; Markdown + JSON with date, machine, runtime.

    python -m dcp_desktop.eval.inllm_results [--model demo] [--n 125] [--n-val 30] [--out docs/results/inllm-test]

1. Calibration (validation split, calibration.calibrate): BTP's stage layers from its own criterion on the
   first 64 validation images, then at most TRIALS evaluations each of BTP's λ, FastV's layer and query,
   PyramidDrop's stage layers, on --n-val images at budgets 16 and 64.
2. The desktop question (validation, btp_desktop.compare): faithful BTP against its K patches given before
   the LLM, at 16 and 64 tokens.
3. Test split (report.evaluate, as dcp-eval): BTP, FastV, PyramidDrop with the chosen knobs; DCP-Prune,
   DivPrune, CDPruner, VisionZip with their calibrated defaults; at 128/64/32/16 tokens, all on the
   PyTorch engine (one thread: FLOPs and times are comparable), every pre-LLM method's kept rows weighed
   by the patches they stand for (--mass-bias on, DCP-Prune as DESIGN.md specifies it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from .. import inllm, models
from ..bench.machine import machine
from ..cli_options import budgets, whole_number
from ..errors import InputError, run_command
from ..pipeline import Pipeline, PipelineOptions
from . import btp_desktop, calibration, harness, report

METHODS = ("btp", "fastv", "pyramiddrop", "dcp", "divprune", "cdpruner", "visionzip")
NOTES = """Knobs: BTP's stage layers by its own criterion (calibration section), its λ, FastV's layer and query and
PyramidDrop's stage layers on the validation split; DCP-Prune, DivPrune, CDPruner and VisionZip keep their
defaults (calibrated earlier with `python -m dcp_desktop.eval.calibrate`). Pre-LLM methods' rows carry the mass
bias. Prefill ms of the pre-LLM methods include the PyTorch engine's one K-shift per kept row (most of it at 128
tokens): compare FLOPs. For a new model re-run the command with
`--model`: every in-LLM choice is made again on validation."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.inllm_results",
                                     description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="demo", help="catalog name, LLM .gguf or folder (default demo)")
    parser.add_argument("--n", type=whole_number, default=125, help="test images, 4 questions each (default 125)")
    parser.add_argument("--n-val", type=whole_number, default=30,
                        help="validation images for the knob search and the desktop question (default 30)")
    parser.add_argument("--btp-calibration", type=whole_number, default=64,
                        help="validation images BTP picks its stage layers on (default 64, the paper's)")
    parser.add_argument("--tokens", type=budgets, default=[128, 64, 32, 16], help="test budgets (default 128,64,32,16)")
    parser.add_argument("--calibrate-tokens", type=budgets, default=[16, 64], help="search budgets (default 16,64)")
    parser.add_argument("--threads", type=whole_number, default=1, help="CPU threads (default 1)")
    parser.add_argument("--out", default="docs/results/inllm-test", help="writes OUT.md and OUT.json")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def run(argv: list[str]) -> dict:
    args = _parser().parse_args(argv)
    if min(args.n, args.n_val) < 1:
        raise InputError(f"--n and --n-val: expected at least 1 image each, got {args.n} and {args.n_val}")
    started = time.perf_counter()
    options = PipelineOptions(n_threads=args.threads, vision_dtype="float32", engine="torch", mass_bias=True)
    validation = harness.scenes_benchmark("validation", args.n_val)
    test = harness.scenes_benchmark("test", args.n)
    with Pipeline(models.resolve(args.model, None), options) as pipe:
        found = _calibrate(pipe, validation, args)
        pipe.configure(replace(options, inllm_options=_knobs(found["chosen"])))
        desktop = _desktop(pipe, validation, args)
        todo = harness.cells(METHODS, args.tokens, pipe.vision.cfg.n_patches)
        with _bar(args, harness.n_answers(test, todo), "test") as bar:
            result = report.evaluate(pipe, test, todo, progress=bar)
    minutes = (time.perf_counter() - started) / 60.0
    record = {"date": datetime.date.today().isoformat(), "machine": machine(), "minutes": minutes,
              "command": "python -m dcp_desktop.eval.inllm_results " + " ".join(argv), "calibration": found,
              "desktop": {str(k): v for k, v in desktop.items()}, "test": result}
    _write(Path(args.out), record)
    print(f"runtime: {minutes:.1f} min", file=sys.stderr)
    return record


def _calibrate(pipe: Pipeline, validation: harness.Benchmark, args) -> dict:
    layer_set = harness.scenes_benchmark("validation", args.btp_calibration, 1)
    methods = list(inllm.METHODS)
    with _bar(args, calibration.n_trials(methods, pipe.engine.llama.n_layers), "calibrate") as bar:
        return calibration.calibrate(pipe, validation, methods, args.calibrate_tokens, bar, btp_set=layer_set)


def _desktop(pipe: Pipeline, validation: harness.Benchmark, args) -> dict:
    with _bar(args, len(validation.examples) * len(args.calibrate_tokens), "desktop") as bar:
        return btp_desktop.compare(pipe, validation, args.calibrate_tokens, bar)


def _knobs(chosen: dict) -> dict:
    """Every in-LLM method's chosen knobs in one inllm_options dict (their names do not collide)."""
    return {name: value for method in inllm.METHODS for name, value in chosen.get(method, {}).items()}


def _bar(args, total: int, what: str):
    return tqdm(total=total, unit="answer" if what != "calibrate" else "trial", desc=what, disable=args.quiet,
                file=sys.stderr)


def _write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    found = record["calibration"]
    text = [f"# In-LLM pruning against pre-LLM pruning ({record['date']})",
            f"`{record['command']}` on {record['machine']}: {record['minutes']:.1f} min.", NOTES,
            "## Test split", report.table(record["test"]),
            "## Desktop question (validation): BTP's choice before the LLM", btp_desktop.table(
                {int(k): v for k, v in record["desktop"].items()}),
            "## Calibration (validation)", f"BTP's share of image tokens each layer shifts: {found['btp_shift']}",
            calibration.table(sorted({k for t in found["trials"] for k in t["accuracy"]}), found["trials"],
                            found["chosen"])]
    out.with_suffix(".md").write_text("\n\n".join(text) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    run_command("inllm_results", run, argv)


if __name__ == "__main__":
    main()
