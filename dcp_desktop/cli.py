"""`dcp-chat`: ask a LLaVA model about an image, offline, with 16 image tokens instead of 576.

    dcp-chat IMAGE "QUESTION" [--model M] [--tokens 16] [--method NAME] [--json]
    dcp-chat IMAGE                      interactive: follow-up questions, /image PATH, /new, /quit
    dcp-chat pull NAME                  download a catalog model (the only command that uses the network)
    dcp-chat models                     list catalog models and whether they are downloaded

Bad input (a file, an argument, a model) prints one line that says what to do, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import models
from .engine import GenerationParams
from .errors import InputError, run_command
from .pipeline import DEFAULT_METHOD, DEFAULT_TOKENS, POSITIONS, EncodedImage, Pipeline, PipelineOptions
from .prune import DEFAULT_OPTIONS, METHODS
from .vision import VISION_DTYPES


EXAMPLES = """\
examples:
  dcp-chat photo.jpg "What is on the table?"                  (default model, 16 image tokens)
  dcp-chat photo.jpg "Is there a dog?" --tokens 64 --json       (more tokens, machine-readable)
  dcp-chat scan.png --model ./my-llava/                          (a folder with LLM + mmproj GGUF)
  dcp-chat photo.jpg "Describe it" --model llm.gguf --mmproj mmproj.gguf
  dcp-chat pull llava-1.5-7b                                     (download once, then offline)
"""


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcp-chat", description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the image file to ask about (PNG, JPEG, WebP, ...)")
    parser.add_argument("question", nargs="?",
                        help="the question; leave out for an interactive chat about the image")
    model = parser.add_argument_group("model")
    model.add_argument("--model", "-m", default=None,
                       help=f"catalog name (default {models.DEFAULT_MODEL}; see `dcp-chat models`), "
                            "an LLM .gguf file, or a folder holding the LLM and its mmproj")
    model.add_argument("--mmproj", default=None, help="the vision projector .gguf (when --model is a file)")
    prune = parser.add_argument_group("image tokens")
    prune.add_argument("--tokens", "-k", type=whole_number, default=DEFAULT_TOKENS,
                       help=f"image tokens the LLM sees, 1..576 (default {DEFAULT_TOKENS}; 576 = all)")
    prune.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                       help=f"how to choose them (default {DEFAULT_METHOD}); 'full' keeps all 576")
    prune.add_argument("--acgr-layer", type=whole_number, default=None, metavar="L",
                       help="prune inside the vision encoder after block L (1..23 on ViT-L): later blocks "
                            "run on the kept tokens only, which saves vision time (default: at the output)")
    prune.add_argument("--acgr-anchors", type=whole_number, default=None, metavar="M",
                       help="tokens kept inside the encoder with --acgr-layer (default 4 x --tokens)")
    prune.add_argument("--prune-option", action="append", default=[], metavar="NAME=VALUE",
                       help="set a pruning knob, e.g. tau=0.3 (repeatable); knobs: " + ", ".join(DEFAULT_OPTIONS))
    add_positions_argument(prune)
    prune.add_argument("--seed", type=int, default=0, help="seed for sampling and the 'random' method")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-tokens", type=whole_number, default=256, help="answer length limit (default 256)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default)")
    run = parser.add_argument_group("hardware")
    run.add_argument("--threads", type=whole_number, default=None, help="CPU threads (default: all cores)")
    run.add_argument("--n-gpu-layers", type=int, default=0,
                     help="LLM layers to offload to the GPU (needs a CUDA/Metal build of llama-cpp-python)")
    run.add_argument("--device", default="cpu", help="torch device for the vision tower: cpu, cuda, mps")
    run.add_argument("--vision-dtype", default="auto", choices=VISION_DTYPES,
                     help="the vision tower's number type (default auto: bfloat16 where the hardware runs it "
                          "natively, else float32)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    out.add_argument("--verbose", "-v", action="store_true", help="show llama.cpp's log and stage timings")
    return parser


def add_positions_argument(group) -> None:
    group.add_argument("--positions", default="grid", choices=POSITIONS,
                       help="where the kept image tokens sit in the LLM's sequence: 'grid' (default) gives each "
                            "the position its patch has in the full 576-token image, so the question sees the "
                            "image's layout as the model was trained to; 'packed' puts them one after another")


def parse_prune_options(pairs: list[str]) -> dict[str, float]:
    options = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in DEFAULT_OPTIONS:
            raise InputError(f"--prune-option {pair}: unknown knob '{name}'; known: {', '.join(DEFAULT_OPTIONS)}")
        try:
            options[name] = float(value)
        except ValueError:
            raise InputError(f"--prune-option {pair}: expected NAME=NUMBER, e.g. tau=0.3") from None
    return options


def _options(args) -> PipelineOptions:
    return PipelineOptions(method=args.method, n_keep=args.tokens, acgr_layer=args.acgr_layer,
                           acgr_anchors=args.acgr_anchors, prune_options=parse_prune_options(args.prune_option),
                           seed=args.seed, positions=args.positions, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                           device=args.device, vision_dtype=args.vision_dtype, verbose=args.verbose)


def _answer_once(pipe: Pipeline, image: EncodedImage, args) -> None:
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    pieces = []
    for piece in pipe.ask(args.question, [image], params):
        pieces.append(piece)
        if not args.json:
            print(piece, end="", flush=True)
    if not args.json:
        print()
    turn, image = pipe.turn, pipe.last_images[0]
    if args.json:
        print(json.dumps(_report(pipe, "".join(pieces)), ensure_ascii=False))
    elif args.verbose:
        print(f"[{image.selection.features.shape[0]} of {image.n_full} image tokens, kappa "
              f"{image.selection.kappa:.3f}; vision {image.timings_ms['vision']:.0f} ms, prune "
              f"{image.timings_ms['prune']:.1f} ms, prefill {turn['prefill']:.0f} ms, first token "
              f"{turn['first_token'] or 0:.0f} ms]", file=sys.stderr)


def _report(pipe: Pipeline, answer: str) -> dict:
    turn, image = pipe.turn, pipe.last_images[0]
    stages = {stage: round(image.timings_ms[stage], 3) for stage in ("vision", "prune", "project")}
    if "vision_saved_estimate" in image.timings_ms:
        stages["vision_saved_estimate"] = round(image.timings_ms["vision_saved_estimate"], 3)
    decode_tps = (turn["decode_tokens"] - 1) / (turn["decode"] / 1000.0) if turn["decode"] > 0 else None
    return {
        "answer": answer,
        "model": pipe.info.name,
        "method": pipe.options.method,
        "tokens": int(image.embeddings.shape[0]),
        "image_tokens_full": image.n_full,
        "kappa": round(image.selection.kappa, 6),
        "used_tatcs": image.selection.used_tatcs,
        "acgr_layer": pipe.acgr_layer,
        "timings_ms": {
            "load": round(pipe.load_ms["load"], 3), **stages,
            "prefill": round(turn["prefill"], 3),
            "first_token": None if turn["first_token"] is None else round(turn["first_token"], 3),
            "total": round(pipe.load_ms["load"] + sum(image.timings_ms[s] for s in ("vision", "prune", "project"))
                           + turn["total"], 3),
        },
        "decode_tokens_per_s": None if decode_tps is None else round(decode_tps, 2),
    }


def _interactive(pipe: Pipeline, first_image: EncodedImage, args) -> None:
    """A chat about the image: follow-ups reuse the cache; /image PATH adds an image to the next question."""
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    pending = [first_image]
    print("Ask about the image. Commands: /image PATH (add an image), /new (new chat), /quit.", file=sys.stderr)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if line in ("/quit", "/exit"):
            return
        try:
            if line.startswith("/image"):
                pending.append(pipe.encode_image(line[len("/image"):].strip()))
                print(f"[image added: it goes in with your next question, as {pipe.n_keep} tokens]", file=sys.stderr)
            elif line == "/new":
                pipe.new_chat()
                pending = []
            elif line:
                for piece in pipe.ask(line, pending, params):
                    print(piece, end="", flush=True)
                print()
                pending = []
        except InputError as error:  # a bad follow-up loses nothing: the chat goes on
            print(f"error: {error}", file=sys.stderr)


def _models_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dcp-chat models", description="List the bundled and catalog models.")
    parser.parse_args(argv)
    print("bundled with dcp-desktop (no download):")
    for bundled in models.BUNDLED.values():
        print(f"  {bundled.name:16} {bundled.files.llm.parent}\n  {'':16} {bundled.description}")
    print(f"catalog, downloaded into {models.cache_dir()}:")
    for status in models.list_models():
        entry = status.entry
        state = f"downloaded, {status.size_bytes / 1e9:.1f} GB" if status.downloaded else \
            f"not downloaded (~{entry.download_gb:.1f} GB: dcp-chat pull {entry.name})"
        print(f"  {entry.name:16} {state}\n  {'':16} {entry.description}")


def _pull_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dcp-chat pull",
                                     description="Download a catalog model into the Hugging Face cache "
                                                 "(resumes an interrupted download).")
    parser.add_argument("name", help="catalog name, e.g. llava-1.5-7b (see `dcp-chat models`)")
    files = models.pull(parser.parse_args(argv).name)
    print(f"ready: {files.llm}\n       {files.mmproj}")


def run(argv: list[str]) -> None:
    if argv[:1] == ["models"]:
        return _models_command(argv[1:])
    if argv[:1] == ["pull"]:
        return _pull_command(argv[1:])
    args = build_parser().parse_args(argv)
    options = _options(args)
    files = models.resolve(args.model, args.mmproj)
    with Pipeline(files, options) as pipe:
        image = pipe.encode_image(args.image)
        if args.question is None:
            _interactive(pipe, image, args)
        else:
            _answer_once(pipe, image, args)


def main(argv: list[str] | None = None) -> None:
    run_command("dcp-chat", run, argv)


if __name__ == "__main__":
    main()
