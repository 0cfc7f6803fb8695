"""`dcp-chat`: ask a LLaVA model about an image, offline, with 16 image tokens instead of 576.

    dcp-chat IMAGE "QUESTION" [--model M] [--tokens 16] [--method NAME] [--json]
    dcp-chat IMAGE                      interactive: follow-up questions, /image PATH, /new, /quit
    dcp-chat pull NAME                  download a catalog model (the only command that uses the network)
    dcp-chat models                     list catalog models and whether they are downloaded
    dcp-chat doctor [--json]            what this install runs on (llama.cpp build, backends, PyTorch), for bug reports

Bad input (a file, an argument, a model) prints one line that says what to do, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import cli_options, doctor, models
from .engine import GenerationParams
from .errors import InputError, run_command
from .pipeline import EncodedImage, Pipeline, Turn


EXAMPLES = """\
examples:
  dcp-chat photo.jpg "What is on the table?"                  (default model, 16 image tokens)
  dcp-chat photo.jpg "Is there a dog?" --tokens 64 --json       (more tokens, machine-readable)
  dcp-chat scan.png --model ./my-llava/                          (a folder with LLM + mmproj GGUF)
  dcp-chat photo.jpg "Describe it" --model llm.gguf --mmproj mmproj.gguf
  dcp-chat pull llava-1.5-7b                                     (download once, then offline)
  dcp-chat doctor --json                                         (the build and devices, for a bug report)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcp-chat", description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the image file to ask about (PNG, JPEG, WebP, ...)")
    parser.add_argument("question", nargs="?",
                        help="the question; leave out for an interactive chat about the image")
    cli_options.add_model_options(parser, default=None)
    prune = parser.add_argument_group("image tokens")
    cli_options.add_pruning_options(prune, single_budget=True)
    prune.add_argument("--seed", type=int, default=0, help="seed for sampling and the 'random' method")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-tokens", type=cli_options.whole_number, default=256,
                     help="answer length limit (default 256)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default)")
    cli_options.add_hardware_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    out.add_argument("--verbose", "-v", action="store_true", help="show llama.cpp's log and stage timings")
    return parser


def _answer_once(pipe: Pipeline, image: EncodedImage, args) -> None:
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    turn = pipe.ask(args.question, [image], params)
    for piece in turn:
        if not args.json:
            print(piece, end="", flush=True)
    if not args.json:
        print()
    tokens = turn.images[0]
    if args.json:
        print(json.dumps(_report(pipe, turn), ensure_ascii=False))
    elif args.verbose:
        print(f"[{len(tokens.embeddings)} of {tokens.n_full} image tokens, kappa {tokens.selection.kappa:.3f}; "
              f"vision {tokens.timings_ms['vision']:.0f} ms, prune {tokens.timings_ms['prune']:.1f} ms, prefill "
              f"{turn.prefill_ms:.0f} ms, first token {turn.first_token_ms or 0:.0f} ms]", file=sys.stderr)


def _report(pipe: Pipeline, turn: Turn) -> dict:
    tokens = turn.images[0]
    stages = {stage: round(tokens.timings_ms[stage], 3) for stage in ("vision", "prune", "project")}
    if "vision_saved_estimate" in tokens.timings_ms:
        stages["vision_saved_estimate"] = round(tokens.timings_ms["vision_saved_estimate"], 3)
    speed = turn.decode_tokens_per_s
    return {
        "answer": turn.answer,
        "model": pipe.info.name,
        "method": pipe.options.method,
        "tokens": len(tokens.embeddings),
        "image_tokens_full": tokens.n_full,
        "kappa": round(tokens.selection.kappa, 6),
        "used_tatcs": tokens.selection.used_tatcs,
        "acgr_layer": pipe.acgr_layer,
        "timings_ms": {
            "load": round(pipe.load_ms["load"], 3), **stages,
            "prefill": round(turn.prefill_ms, 3),
            "first_token": None if turn.first_token_ms is None else round(turn.first_token_ms, 3),
            "total": round(pipe.load_ms["load"] + sum(tokens.timings_ms[s] for s in ("vision", "prune", "project"))
                           + turn.total_ms, 3),
        },
        "decode_tokens_per_s": None if speed is None else round(speed, 2),
    }


def _interactive(pipe: Pipeline, first_image: EncodedImage, args) -> None:
    """A chat about the image: follow-ups reuse the cache; /image PATH adds an image to the next question."""
    params = GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    pending = [first_image]
    print("Ask about the image. Commands: /image PATH (add an image), /new (new chat), /quit.", file=sys.stderr)
    if pipe.options.follow_ups == "reprune" and not pipe.reprunes_follow_ups:
        print(f"[--follow-ups reprune: {pipe.options.method} does not read the question here, so follow-ups keep "
              "the first question's tokens]", file=sys.stderr)
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


def _doctor_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dcp-chat doctor", description=doctor.__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (paste it into a bug report)")
    info = doctor.report()
    print(json.dumps(info, indent=1) if parser.parse_args(argv).json else doctor.text(info))


def run(argv: list[str]) -> None:
    if argv[:1] == ["doctor"]:
        return _doctor_command(argv[1:])
    if argv[:1] == ["models"]:
        return _models_command(argv[1:])
    if argv[:1] == ["pull"]:
        return _pull_command(argv[1:])
    args = build_parser().parse_args(argv)
    options = cli_options.options_from_args(args)
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
