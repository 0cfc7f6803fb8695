"""`dcp-bench`: speed measurements that compare against a peer in the same run.

    dcp-bench prune [--json] [--repeats N]     the pruning core: native vs NumPy vs PyTorch
    dcp-bench ttft [--shapes tiny|7b] [--threads T] [--runs R] [--acgr-layer L] [--multi-image N] [--json]
                                               time to first token and memory: our path vs llama.cpp's own
    dcp-bench builds [--lib NAME=PATH[:VARIANT] ...] [--shapes 7b|tiny] [--threads T] [--prompt N] [--decode N]
                                               prefill/decode speed of llama.cpp builds (ours always included)
"""

from __future__ import annotations

import argparse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dcp-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prune = commands.add_parser("prune", help="time every pruning method: native C++ vs NumPy vs PyTorch")
    prune.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    prune.add_argument("--repeats", type=int, default=50, help="calls per cell for the native core (default 50)")
    ttft = commands.add_parser("ttft", help="time to first token and memory: our path vs llama.cpp's own (mtmd)")
    ttft.add_argument("--shapes", choices=("tiny", "7b"), default="7b",
                      help="7b: random-weight LLaVA-1.5-7B shapes (built once, ~4.4 GB in the user cache or "
                           "$DCP_BENCH_CACHE); tiny: the test model (default 7b)")
    ttft.add_argument("--threads", type=_positive, default=None, help="threads everywhere (default: all cores)")
    ttft.add_argument("--runs", type=_positive, default=None,
                      help="runs per configuration after a warm-up (default 3 for 7b, 5 for tiny)")
    ttft.add_argument("--acgr-layer", type=_positive, default=None,
                      help="block after which dcp-16-inencoder prunes (default 8 of 23 for 7b, 1 of 3 for tiny)")
    ttft.add_argument("--multi-image", type=_positive, default=0, metavar="N",
                      help="also run one conversation with N images at 16 tokens (default off)")
    ttft.add_argument("--json", action="store_true", help="print the JSON report instead of a table")
    builds = commands.add_parser("builds", help="prefill and decode tokens/s of llama.cpp builds, each in a fresh process")
    builds.add_argument("--lib", action="append", default=[], metavar="NAME=PATH[:VARIANT]",
                        help="a folder with libllama.so to compare (repeatable); ours is always measured last")
    builds.add_argument("--shapes", choices=("tiny", "7b"), default="7b", help="model shapes (default 7b, Q4_0)")
    builds.add_argument("--threads", type=_positive, default=2, help="threads (default 2)")
    builds.add_argument("--prompt", type=_positive, default=576, help="prefill tokens, one batch (default 576)")
    builds.add_argument("--decode", type=_positive, default=16, help="tokens decoded one at a time (default 16)")
    builds.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.command == "builds":
        from . import llama_builds as bench
    elif args.command == "ttft":
        from . import ttft as bench
    else:
        from . import prune as bench  # imports torch; keep `--help` fast
    bench.main(args)
