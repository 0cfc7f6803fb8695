"""Choose every pruning method's own knobs on the benchmark's validation split (never on test), with the
same effort for each.

    python -m dcp_desktop.eval.calibrate [--model demo] [--n 100] [--tokens 16,32] [--methods …] [--json FILE]
                                         (the command-line tool over this module: eval/calibrate.py)

Each method with knobs gets TRIALS evaluations: a method with one knob tries TRIALS values of it; a method
with several (DCP-Prune) runs a coordinate search over its grids, whose sizes add up to TRIALS: from the
current defaults, each knob in turn takes every value of its grid while the others stay fixed, and keeps
the value with the best mean accuracy over the budgets (ties keep the earlier value: the default first).
DivPrune, FasterVLM, random and pool have no knobs. Prints every value tried and each method's choice;
the chosen values are then written into the defaults by hand (the option table in native/methods.cpp, the
one place they live) and checked with `dcp-eval --split test`.

The in-LLM methods (inllm/; --engine torch) have grids that follow the model's depth (`inllm_grids`): at
most TRIALS evaluations each, the whole grid when it is smaller (FastV's layer and query, PyramidDrop's
stage layers: on a 3-layer model there are only 4 and 3 choices). BTP first picks its stage layers the
paper's way, from how much each layer changes the image tokens on the first 64 validation images
(`btp_layers`, no accuracy involved), then searches its λ over TRIALS values.

With 100 images × 4 questions an accuracy near 80% has a 95% interval of about ±4 points, so one pass over
the grids is a coarse choice, not a fine optimum.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import torch

from .. import inllm
from ..errors import InputError
from ..inllm import btp
from ..pipeline import Pipeline, PipelineOptions
from ..prune import DEFAULT_OPTIONS
from ..torch_llama import Hooks
from . import harness

TRIALS = 24  # evaluations per method with knobs


def _fine_grid(default: float) -> tuple[float, ...]:
    """TRIALS values in [0, 1], evenly spread, the default among them."""
    spread = [round(float(v), 4) for v in np.linspace(0.0, 1.0, TRIALS - 1)]
    if round(default, 4) in spread:
        spread = [round(float(v), 4) for v in np.linspace(0.0, 1.0, TRIALS)]
    return tuple(sorted(set(spread) | {round(default, 4)}))[:TRIALS]


GRIDS = {  # method: {knob: values tried, the default among them}; each method's sizes add up to TRIALS
    "dcp": {  # the second build's knobs first (docs/dcp-prune.md); text knobs only matter with tatcs_use_text 1
        "dcp_anchors_per_token": (0, 4, 8),  # 0: TATCS on every input token
        "tatcs_reselect": (1, 0),
        "tatcs_use_text": (0, 1),
        "tau": (0.2, 0.0, 1e6),  # 1e6: never TATCS, i.e. ACGR alone
        "acgr_self_share": (0.5, 0.0, 1.0),
        "acgr_min_similarity": (0.0, 0.2, 0.5),
        "acgr_n_neighbors": (4, 1, 2),
        "acgr_spatial_weight": (0.5, 0.0, 1.0),
        "acgr_spatial_sigma": (2.0, 1.0),
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


def inllm_grids(n_layers: int) -> dict[str, dict[str, tuple]]:
    """The in-LLM methods' grids for a model of n_layers (BTP's stage layers are chosen before: btp_layers)."""
    hook_layers = list(range(n_layers - 1))  # prune after layer 0 .. n_layers - 2
    defaults = inllm.default_options(n_layers)
    fastv_layers = _spread([defaults["fastv_layer"], *hook_layers], TRIALS - len(inllm.fastv.QUERIES))
    stage_sets = [defaults["pyramiddrop_layers"], *_evenly_spaced_sets(hook_layers, max_stages=3)]
    return {"fastv": {"fastv_layer": fastv_layers, "fastv_query": inllm.fastv.QUERIES},
            "pyramiddrop": {"pyramiddrop_layers": _spread(stage_sets, TRIALS)},
            "btp": {"btp_lambda": _fine_grid(defaults["btp_lambda"])}}


def _evenly_spaced_sets(layers: list[int], max_stages: int) -> list[tuple[int, ...]]:
    """Every set of 1..max_stages layers from `layers` at equal steps (PyramidDrop's stages are even)."""
    sets = [(first,) for first in layers]
    for stages in range(2, max_stages + 1):
        sets += [tuple(range(first, first + step * stages, step)) for step in range(1, len(layers))
                 for first in layers if first + step * (stages - 1) <= layers[-1]]
    return sets


def _spread(values: list, n: int) -> tuple:
    """At most n of the distinct values, evenly over the list, the first (the default) always among them."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= n:
        return tuple(distinct)
    return tuple(distinct[int(i)] for i in np.linspace(0, len(distinct) - 1, n).round())


def btp_layers(pipe: Pipeline, benchmark: harness.Benchmark) -> tuple[tuple[int, ...], list[float]]:
    """BTP's stage layers from its calibration set (the benchmark's images) and the share of image tokens each
    layer shifts (cosine before/after below btp.SHIFT_COSINE). No stage boundary (every layer shifts alike):
    the default layers."""
    images = [group[0][1] for group in harness.by_image(benchmark.examples)]
    if not images:
        raise InputError(f"{benchmark.name}: BTP's calibration set is empty; give it at least 1 image "
                         "(--btp-calibration)")
    base = pipe.options
    try:
        shift = np.mean([_image_shift(pipe, example) for example in images], axis=0)  # (n_layers,)
    finally:
        pipe.configure(base)
    layers = btp.layers_from_shifts(shift) or btp.default_layers(len(shift))
    return layers, [float(v) for v in shift]


def _image_shift(pipe: Pipeline, example: harness.Example) -> np.ndarray:
    """Per layer, the share of this image's tokens whose hidden state the layer turns by more than τ."""
    pipe.configure(replace(pipe.options, method="full"))
    rows = pipe.prepare(pipe.encode_image(example.load()), example.question).rows(pipe.options.positions)
    seen = _EmbeddedRows()
    pipe.new_chat()
    pipe.engine.add_user_turn(example.question, [rows], hooks=seen)
    states = [torch.as_tensor(rows.embeddings), *seen.after()]  # n_layers + 1 × (576, d)
    return np.array([float((torch.cosine_similarity(a, b, dim=-1) < btp.SHIFT_COSINE).float().mean())
                     for a, b in zip(states, states[1:])])


class _EmbeddedRows(Hooks):
    """Keeps the image rows' hidden states after every layer."""

    def __init__(self):
        super().__init__()
        self.states: dict[int, list[torch.Tensor]] = {}

    def after_layer(self, layer, batch):
        if batch.embedded:
            self.states.setdefault(layer, []).append(batch.x)

    def after(self) -> list[torch.Tensor]:
        return [torch.cat(self.states[layer]) for layer in sorted(self.states)]


def search(pipe: Pipeline, benchmark: harness.Benchmark, method: str, budgets_: list[int], progress,
           grids: dict | None = None) -> tuple[dict, list[dict]]:
    """The coordinate search for one method (over GRIDS[method], or `grids` for an in-LLM method, whose
    knobs go into inllm_options on top of pipe.options'); returns its chosen knobs and every trial."""
    grids = GRIDS[method] if grids is None else grids
    field = "prune_options" if method in GRIDS else "inllm_options"
    defaults = DEFAULT_OPTIONS if method in GRIDS else inllm.default_options(pipe.engine.llama.n_layers)
    chosen = {name: defaults[name] for name in grids}
    trials = []
    for name, values in grids.items():
        ordered = sorted(dict.fromkeys(values), key=lambda v: not _same(v, chosen[name]))  # the default first
        results = []
        for i, value in enumerate(ordered):
            knobs = {**getattr(pipe.options, field), **chosen, name: value}
            options = replace(pipe.options, method=method, **{field: knobs})
            accuracies = score(pipe, benchmark, options, budgets_)
            trials.append({"method": method, "knob": name, "value": value, "accuracy": dict(zip(budgets_, accuracies))})
            results.append((float(np.mean(accuracies)), -i))
            progress.update()
        chosen[name] = ordered[-max(results)[1]]  # ties: the earlier value
    return chosen, trials


def _same(a, b) -> bool:
    return abs(a - b) <= 1e-3 if isinstance(a, float) and isinstance(b, float) else a == b


def table(budgets_: list[int], trials: list[dict], chosen: dict) -> str:
    head = "| method | knob | value | " + " | ".join(f"accuracy at {k}" for k in budgets_) + " | mean |"
    lines = [head, "|" + "---|" * (4 + len(budgets_))]
    for t in trials:
        accuracies = [t["accuracy"][k] for k in budgets_]
        cells = " | ".join(f"{100 * a:.1f}%" for a in accuracies)
        lines.append(f"| {t['method']} | {t['knob']} | {t['value']} | {cells} | {100 * np.mean(accuracies):.1f}% |")
    return "\n".join(lines) + "\n\nchosen: " + json.dumps(chosen)


def calibrate(pipe: Pipeline, benchmark: harness.Benchmark, methods: list[str], budgets_: list[int], progress, *,
              btp_set: harness.Benchmark) -> dict:
    """Every method's search on `benchmark` (BTP's stage layers first, from the images of btp_set);
    {"chosen", "trials", "btp_shift"}."""
    n_layers = getattr(pipe.engine.llama, "n_layers", None)
    chosen, trials, shift = {}, [], None
    for method in methods:
        grids = None
        if method in inllm.METHODS:
            if method == "btp":
                layers, shift = btp_layers(pipe, btp_set)
                pipe.configure(replace(pipe.options, inllm_options={**pipe.options.inllm_options, "btp_layers": layers}))
            grids = inllm_grids(n_layers)[method]
        chosen[method], method_trials = search(pipe, benchmark, method, budgets_, progress, grids)
        if method == "btp":
            chosen[method]["btp_layers"] = pipe.options.inllm_options["btp_layers"]
        trials += method_trials
    return {"chosen": chosen, "trials": trials, "btp_shift": shift}


def n_trials(methods: list[str], n_layers: int | None) -> int:
    """How many evaluations calibrate() runs (for a progress bar)."""
    grids = {**GRIDS, **(inllm_grids(n_layers) if n_layers else {})}
    return sum(len(set(values)) for m in methods for values in grids[m].values())
