"""`python -m dcp_desktop.eval.calibrate`: choose every pruning method's own knobs on the validation split
(never on test), with the same effort for each. The search itself, and why it is fair, is in
eval/calibration.py.

    python -m dcp_desktop.eval.calibrate [--model demo] [--n 100] [--tokens 16,32] [--methods …] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from tqdm import tqdm

from .. import inllm, models
from ..cli_options import budgets, method_list, whole_number
from ..engine import BACKENDS
from ..errors import InputError, run_command
from ..inllm import btp
from ..pipeline import Pipeline, PipelineOptions
from . import calibration, harness
from .report import write_json


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.calibrate", description=__doc__.split("\n\n")[0],
                                     epilog=calibration.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="demo", help="catalog name, LLM .gguf or folder (default demo)")
    parser.add_argument("--n", type=whole_number, default=100, help="validation images (default 100, 4 questions each)")
    parser.add_argument("--tokens", type=budgets, default=[16, 32], help="budgets to optimise (default 16,32)")
    knobbed = [*calibration.GRIDS, *inllm.METHODS]
    parser.add_argument("--methods", type=method_list, default=list(calibration.GRIDS),
                        help=f"methods to calibrate (default {','.join(calibration.GRIDS)}; also "
                             f"{','.join(inllm.METHODS)} with "
                             "--engine torch)")
    parser.add_argument("--engine", choices=BACKENDS, default="llamacpp",
                        help="the LLM in llama.cpp (default) or PyTorch (needed by the in-LLM methods)")
    parser.add_argument("--btp-calibration", type=whole_number, default=btp.CALIBRATION_IMAGES, metavar="N",
                        help=f"validation images BTP picks its stage layers on (default {btp.CALIBRATION_IMAGES})")
    parser.add_argument("--threads", type=whole_number, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every trial and the choice as JSON")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise InputError(f"--n: expected at least 1 image, got {args.n}")
    without = [m for m in args.methods if m not in knobbed]
    if without:
        raise InputError(f"--methods: {', '.join(without)} have no knobs to calibrate; choose from {', '.join(knobbed)}")
    benchmark = harness.scenes_benchmark("validation", args.n)
    options = PipelineOptions(n_threads=args.threads, vision_dtype="float32", engine=args.engine)
    with Pipeline(models.resolve(args.model, None), options) as pipe:
        for method in args.methods:  # an in-LLM method on llama.cpp fails here, before any trial
            pipe.check(replace(options, method=method, n_keep=args.tokens[0]))
        total = calibration.n_trials(args.methods, getattr(pipe.engine.llama, "n_layers", None))
        with tqdm(total=total, unit="trial", desc="calibrate", file=sys.stderr) as bar:
            found = calibration.calibrate(pipe, benchmark, args.methods, args.tokens, bar,
                              btp_set=harness.scenes_benchmark("validation", args.btp_calibration, 1))
    report = {"model": args.model, "split": "validation", "n": len(benchmark.examples), "tokens": args.tokens,
              "trials_per_method": calibration.TRIALS, **found}
    print(calibration.table(args.tokens, found["trials"], found["chosen"]))
    if args.json:
        write_json(args.json, report)
    return report


def main(argv: list[str] | None = None) -> None:
    run_command("calibrate", run, argv)


if __name__ == "__main__":
    main()
