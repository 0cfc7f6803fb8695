"""In-LLM pruning: methods that drop image tokens between the language model's decoder layers, deciding
from the prompt's attention there (FastV, PyramidDrop, BTP).

llama.cpp runs every layer on every cell it holds, so these run on the PyTorch engine only (evaluation:
`dcp-eval --engine torch`); the image goes in with all its rows and the hook (hook.py) prunes inside.

Knobs are `--inllm-option NAME=VALUE`, named after their method so that one run can carry every method's:

    btp_layers=0,1            stage layers (prune after these 0-based decoder layers)
    btp_budgets=96,16         image tokens kept per stage (default: a fixed fraction per stage, ending at K)
    btp_lambda=0.6            λ of the first stage (BTP's attention weight; see btp.py)
    fastv_layer=1             FastV's K: prune once, after this layer
    fastv_query=last|text     whose attention ranks: the prompt's last token, or the mean over the question
    pyramiddrop_layers=0,1    PyramidDrop's stage ends
    pyramiddrop_budgets=96,16
"""

from __future__ import annotations

from ..errors import InputError
from . import btp, fastv, pyramiddrop
from .schedule import make_schedule

METHODS = ("btp", "fastv", "pyramiddrop")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError
    return value


def _query(text: str) -> str:
    if text not in fastv.QUERIES:
        raise ValueError
    return text


KNOBS = {  # name: (parse the text after '=', what it expects)
    "btp_layers": (_ints, "comma-separated decoder layers, e.g. 0,1"),
    "btp_budgets": (_ints, "comma-separated token counts, one per stage, e.g. 96,16"),
    "btp_lambda": (_unit, "a number in [0, 1]"),
    "fastv_layer": (int, "one decoder layer, e.g. 1"),
    "fastv_query": (_query, "last or text"),
    "pyramiddrop_layers": (_ints, "comma-separated decoder layers, e.g. 0,1"),
    "pyramiddrop_budgets": (_ints, "comma-separated token counts, one per stage, e.g. 96,16"),
}


def parse_options(pairs: list[str]) -> dict:
    """`--inllm-option NAME=VALUE` pairs → {name: value}; ranges against the model are checked by
    make_pruner."""
    options = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in KNOBS:
            raise InputError(f"--inllm-option {pair}: unknown knob '{name}'; known: {', '.join(KNOBS)}")
        parse, expected = KNOBS[name]
        try:
            options[name] = parse(text)
        except ValueError:
            raise InputError(f"--inllm-option {pair}: expected {name}=<{expected}>") from None
    return options


def default_options(n_layers: int) -> dict:
    """Every knob's value when none is given, for a model of n_layers decoder layers."""
    return {"btp_layers": btp.default_layers(n_layers), "btp_lambda": btp.BTP().lam,
            "fastv_layer": fastv.default_layers(n_layers)[0], "fastv_query": "last",
            "pyramiddrop_layers": pyramiddrop.default_layers(n_layers)}


def make_pruner(method: str, options: dict, *, n_keep: int, n_full: int, n_layers: int,
                grid_width: int):
    """A fresh hook (hook.StagePruner) for one turn of `method` at budget n_keep; InputError for options
    that do not fit the model."""
    from .hook import StagePruner  # imports transformers (torch_llama): only when a method runs

    given = {**default_options(n_layers), **options}
    if method == "fastv":
        layers, budgets, names = (given["fastv_layer"],), None, ("fastv_layer", "budgets")
        chooser = fastv.FastV(given["fastv_query"])
    elif method in ("btp", "pyramiddrop"):
        layers, budgets = given[f"{method}_layers"], given.get(f"{method}_budgets")
        names = (f"{method}_layers", f"{method}_budgets")
        chooser = btp.BTP(given["btp_lambda"]) if method == "btp" else pyramiddrop.PyramidDrop()
    else:
        raise InputError(f"--method: '{method}' is not an in-LLM method; choose one of {', '.join(METHODS)}")
    schedule = make_schedule(layers, budgets, n_keep=n_keep, n_full=n_full, n_layers=n_layers, names=names)
    return StagePruner(chooser, schedule, n_full=n_full, grid_width=grid_width)
