"""`dcp-eval`: accuracy and speed of every pruning method × token budget, on the synthetic benchmark or
on your own VQA file, with one loaded model.

    dcp-eval [--model demo] [--split test|validation] [--n 100] [--seed S]
             [--methods dcp,visionzip,...] [--tokens 576,192,...,8] [--json FILE] [--plot FILE.png]
    dcp-eval --data my.jsonl --model llava-1.5-7b ...        {"image", "question", "answer"} per line

Prints a Markdown table: retention (accuracy / full-token accuracy) per method and budget, then accuracy
per question type, mean κ and time per stage for every cell. Bad input prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from .. import cli_options, models
from ..cli_options import whole_number
from ..engine import GenerationParams
from ..errors import InputError, run_command
from ..engine import BACKENDS
from ..pipeline import Pipeline
from . import harness, report

DEFAULT_METHODS = ("dcp", "visionzip", "divprune", "cdpruner", "fastervlm", "pool", "random")
DEFAULT_BUDGETS = (576, 192, 128, 64, 32, 16, 8)
DEFAULT_IMAGES = 100  # × 4 questions: a 95% interval of about ±4 points on an accuracy near 80%

EXAMPLES = """\
examples:
  dcp-eval --model demo --split test --n 100 --json results.json --plot accuracy.png
  dcp-eval --split validation --methods dcp --tokens 16 --prune-option tau=0.3     (tune a knob)
  dcp-eval --model demo --acgr-layer 3 --methods dcp,fastervlm --tokens 64,16      (prune inside the encoder)
  dcp-eval --model llava-1.5-7b --data pope.jsonl --tokens 576,64,16               (your own questions)
  dcp-eval --engine torch --threads 1 --methods btp,fastv,pyramiddrop,dcp --tokens 64,16
           --inllm-option btp_layers=0,1                          (prune inside the LLM: PyTorch engine)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcp-eval", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("questions")
    data.add_argument("--split", choices=("test", "validation"), default="test",
                      help="synthetic benchmark split (default test; tune knobs on validation)")
    data.add_argument("--n", type=whole_number, default=None,
                      help=f"images (default {DEFAULT_IMAGES}; with --data: all of them)")
    data.add_argument("--n-questions-per-image", type=whole_number, default=4,
                      help="questions per synthetic image (default 4; 12 makes per-image accuracy, and so κ's "
                           "correlation with it, less of a coin flip)")
    data.add_argument("--conversation", action="store_true",
                      help="ask each image's questions as one chat (the first brings the image, the rest follow "
                           "up) and report first-question and follow-up accuracy apart")
    data.add_argument("--seed", dest="image_set", type=int, default=None,
                      help="another image set of the split (default: the standard set)")
    data.add_argument("--data", default=None, metavar="FILE.jsonl",
                      help="your own questions instead: {\"image\", \"question\", \"answer\"} per line, "
                           "image paths relative to the file; answers matched POPE/GQA-style")
    cli_options.add_model_options(parser, default="demo")
    prune = parser.add_argument_group("pruning")
    prune.add_argument("--methods", type=cli_options.method_list, default=list(DEFAULT_METHODS),
                       help=f"comma-separated (default {','.join(DEFAULT_METHODS)}); 'full' always runs")
    prune.add_argument("--tokens", dest="budgets", type=cli_options.budgets, default=list(DEFAULT_BUDGETS),
                       help=f"budgets (default {','.join(map(str, DEFAULT_BUDGETS))}); 576 is the 'full' run")
    cli_options.add_pruning_options(prune, single_budget=False)
    cli_options.add_inllm_options(prune)
    prune.add_argument("--max-tokens", type=whole_number, default=harness.SHORT_ANSWER.max_tokens,
                       help=f"answer length limit (default {harness.SHORT_ANSWER.max_tokens}; greedy)")
    hardware = cli_options.add_hardware_options(parser, vision_dtype="float32")  # bfloat16 ties [CLS] scores
    hardware.add_argument("--engine", choices=BACKENDS, default="llamacpp",
                          help="run the LLM in llama.cpp (default; what the app does) or in PyTorch (the same "
                               "logits within ~3e-3, slower; it can show attention and drop rows between layers)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    out.add_argument("--plot", default=None, metavar="FILE.png", help="accuracy vs tokens per method (matplotlib)")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _benchmark(args) -> harness.Benchmark:
    if args.n is not None and args.n < 1:
        raise InputError(f"--n: expected at least 1 image, got {args.n}")
    if args.data:
        return harness.read_jsonl(args.data, args.n)
    n_images = DEFAULT_IMAGES if args.n is None else args.n
    return harness.scenes_benchmark(args.split, n_images, args.n_questions_per_image, args.image_set)


def run(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    if args.plot:
        report.pyplot()  # a missing matplotlib fails now, not after the whole run
    benchmark = _benchmark(args)
    options = cli_options.options_from_args(args)
    with Pipeline(models.resolve(args.model, args.mmproj), options) as pipe:
        todo = harness.cells(args.methods, args.budgets, pipe.vision.cfg.n_patches)
        with tqdm(total=harness.n_answers(benchmark, todo), unit="answer", desc="dcp-eval",
                  disable=args.quiet, file=sys.stderr) as bar:
            result = report.evaluate(pipe, benchmark, todo, params=GenerationParams(max_tokens=args.max_tokens),
                                     conversation=args.conversation, progress=bar)
    print(report.table(result))
    if args.json:
        report.write_json(args.json, result)
    if args.plot:
        report.plot(result, args.plot)
    return result


def main(argv: list[str] | None = None) -> None:
    run_command("dcp-eval", run, argv)


if __name__ == "__main__":
    main()
