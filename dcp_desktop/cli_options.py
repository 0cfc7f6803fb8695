"""Command-line options the tools share (`dcp-chat`, `dcp-eval`, the calibration search): one definition
of each, and one `options_from_args` that turns them into PipelineOptions. No tool imports another.

Token budgets are parsed here but checked in one place, prune.check_n_keep (via the Pipeline), which
knows the model's patch count.
"""

from __future__ import annotations

import argparse

from . import inllm, models
from .errors import InputError
from .pipeline import DEFAULT_METHOD, DEFAULT_TOKENS, FOLLOW_UPS, POSITIONS, PipelineOptions
from .prune import DEFAULT_OPTIONS, METHODS
from .vision import VISION_DTYPES


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def budgets(text: str) -> list[int]:
    """Comma-separated image-token budgets, e.g. `64,16`."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, e.g. 64,16; got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one token count, e.g. 64,16; got '{text}'")
    return values


def method_list(text: str) -> list[str]:
    """Comma-separated method names, e.g. `dcp,divprune` (the in-LLM ones too: evaluation tools only)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = METHODS + inllm.METHODS
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(known)}")
    return names


def parse_prune_options(pairs: list[str]) -> dict[str, float]:
    """`--prune-option NAME=VALUE` pairs → {name: value}; ranges are checked by prune.select."""
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


def add_model_options(parser: argparse.ArgumentParser, default: str | None) -> None:
    group = parser.add_argument_group("model")
    shown = default or f"{models.DEFAULT_MODEL}; see `dcp-chat models`"
    group.add_argument("--model", "-m", default=default,
                       help=f"catalog name (default {shown}), an LLM .gguf file, or a folder holding the LLM "
                            "and its mmproj")
    group.add_argument("--mmproj", default=None, help="the vision projector .gguf (when --model is a file)")


def add_pruning_options(group, *, single_budget: bool) -> None:
    """The encoder and placement knobs every tool has (the method and budget arguments differ per tool)."""
    if single_budget:
        group.add_argument("--tokens", "-k", type=whole_number, default=DEFAULT_TOKENS,
                           help=f"image tokens the LLM sees, 1..576 (default {DEFAULT_TOKENS}; 576 = all)")
        group.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                           help=f"how to choose them (default {DEFAULT_METHOD}); 'full' keeps all 576")
    group.add_argument("--acgr-layer", type=whole_number, default=None, metavar="L",
                       help="prune inside the vision encoder after block L (1..23 on ViT-L): later blocks run on "
                            "the kept tokens only, which saves vision time (default: at the output)")
    group.add_argument("--acgr-anchors", type=whole_number, default=None, metavar="M",
                       help="tokens kept inside the encoder with --acgr-layer (default 4 x the budget)")
    group.add_argument("--prune-option", action="append", default=[], metavar="NAME=VALUE",
                       help="set a pruning knob, e.g. tau=0.3 (repeatable); knobs: " + ", ".join(DEFAULT_OPTIONS))
    group.add_argument("--mass-bias", choices=("on", "off"), default="on",
                       help="let the LLM weigh each kept token by how many patches it stands for (ln m_k added to "
                            "the attention toward it, in every layer; default on; off needs no attention bias in "
                            "llama.cpp)")
    group.add_argument("--follow-ups", default="keep", choices=FOLLOW_UPS,
                       help="what a follow-up question about an image already in the chat sees: 'keep' (default) "
                            "the tokens chosen with the first question; 'reprune' tokens chosen again with the "
                            "new question (only methods that read the question: cdpruner, or dcp/tatcs with "
                            "tatcs_use_text=1), re-decoding the chat from the image on")
    group.add_argument("--positions", default="grid", choices=POSITIONS,
                       help="where the kept image tokens sit in the LLM's sequence: 'grid' (default) gives each "
                            "the position its patch has in the full 576-token image, so the question sees the "
                            "image's layout as the model was trained to; 'packed' puts them one after another")


def add_inllm_options(group) -> None:
    """The knobs of the methods that prune inside the LLM (evaluation tools: they need --engine torch)."""
    group.add_argument("--inllm-option", action="append", default=[], metavar="NAME=VALUE",
                       help="set a knob of the in-LLM methods (btp, fastv, pyramiddrop), e.g. btp_layers=0,1 "
                            "(repeatable); knobs: " + ", ".join(inllm.KNOBS))


def add_hardware_options(parser: argparse.ArgumentParser, *, vision_dtype: str = "auto"):
    """The hardware group (returned, for a tool's own hardware options)."""
    group = parser.add_argument_group("hardware")
    group.add_argument("--threads", type=whole_number, default=None, help="CPU threads (default: all cores)")
    group.add_argument("--n-gpu-layers", type=int, default=None,
                       help="LLM layers to offload to the GPU (default: all of them when llama.cpp was built with "
                            "CUDA or Metal, else 0; -1: all)")
    group.add_argument("--device", default="auto",
                       help="torch device for the vision tower: auto (default: the GPU if PyTorch has one), cpu, "
                            "cuda, mps")
    group.add_argument("--vision-dtype", default=vision_dtype, choices=VISION_DTYPES,
                       help=f"the vision tower's number type (default {vision_dtype}; auto: bfloat16 where the "
                            "hardware runs it natively, else float32)")
    return group


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    """PipelineOptions from any tool's parsed arguments (a tool without --method/--tokens/--seed keeps
    the defaults)."""
    return PipelineOptions(
        method=getattr(args, "method", DEFAULT_METHOD), n_keep=getattr(args, "tokens", DEFAULT_TOKENS),
        acgr_layer=args.acgr_layer, acgr_anchors=args.acgr_anchors,
        prune_options=parse_prune_options(args.prune_option), inllm_options=inllm.parse_options(getattr(args, "inllm_option", [])),
        seed=getattr(args, "seed", 0) or 0,
        positions=args.positions, follow_ups=args.follow_ups, mass_bias=args.mass_bias == "on", n_threads=args.threads,
        n_gpu_layers=args.n_gpu_layers, device=args.device,
        vision_dtype=args.vision_dtype, engine=getattr(args, "engine", "llamacpp"),
        verbose=getattr(args, "verbose", False))
