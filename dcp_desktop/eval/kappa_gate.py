"""Choose κ's form and τ for DCP-Prune's gate from two validation runs, without re-running the LLM.

    dcp-eval --split validation --methods dcp --tokens 576,32,16 --prune-option tau=1e6 --json acgr.json
    dcp-eval --split validation --methods dcp --tokens 576,32,16 --prune-option tau=0 --json tatcs.json
    python -m dcp_desktop.eval.kappa_gate acgr.json tatcs.json [--prune-option NAME=VALUE ...]

The first run keeps ACGR's tokens on every image, the second re-selects with TATCS on every image, with
the same knobs otherwise. For each image and budget this tool recomputes ACGR's output (the κ gate's
input) and several forms of κ on it, then reports per form and budget:
- the Spearman ρ between κ and the image's accuracy loss under ACGR (full − ACGR; what DESIGN.md asks κ to
  predict), and between κ and TATCS's gain over ACGR (what the gate acts on);
- each form's ρ with the loss minus that of the form in use (coverage), with a 95% bootstrap interval
  over the images: a form replaces the one in use only when it predicts the loss better beyond noise;
- the validation accuracy of the gated method for τ at κ's quantiles (0 = always TATCS, 1 = never): picking
  TATCS's outcome where κ > τ and ACGR's elsewhere is exactly what dcp would answer, since each question is
  answered in a fresh conversation.
- the τ shared by all budgets with the best mean gated accuracy over them (τ is one option for every K).
The κ forms (all between the input tokens and ACGR's K tokens with their masses):
- `coverage`: dcp_kappa (native/prune.h), the form in use: 1 − mean over the input tokens of their best
  cosine to a kept token (how much of the image no kept token resembles);
- `shift_spread`: the form before it: mean shift in units of spread + |½ ln spread ratio|;
- `shift`: its first term alone; `spread`: its second term alone;
- `unweighted`: shift_spread with every kept mass 1 (what the LLM sees without the mass bias).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from .. import cli_options, models, scenes
from ..errors import InputError, run_command
from ..pipeline import Pipeline, PipelineOptions
from ..prune import kappa, select
from . import stats
from .report import write_json

FORMS = ("coverage", "shift_spread", "shift", "spread", "unweighted")
IN_USE = "coverage"  # dcp_kappa's form


def kappa_forms(full: np.ndarray, kept: np.ndarray, masses: np.ndarray) -> dict[str, float]:
    """Every κ form between the (N, D) input rows and the (K, D) kept rows with their (K,) masses."""
    x, y, m = full.astype(np.float64), kept.astype(np.float64), masses.astype(np.float64)
    mean_x, mean_y = x.mean(0), (m[:, None] * y).sum(0) / m.sum()
    spread_x = ((x - mean_x) ** 2).sum(1).mean()
    spread_y = (m * ((y - mean_y) ** 2).sum(1)).sum() / m.sum()
    eps = 1e-6 * (x ** 2).sum(1).mean() + 1e-30
    shift = math.sqrt(((mean_y - mean_x) ** 2).sum() / (spread_x + eps))
    spread = abs(0.5 * math.log((spread_y + eps) / (spread_x + eps)))
    plain_y = y.mean(0)
    plain_spread = ((y - plain_y) ** 2).sum(1).mean()
    unweighted = math.sqrt(((plain_y - mean_x) ** 2).sum() / (spread_x + eps)) \
        + abs(0.5 * math.log((plain_spread + eps) / (spread_x + eps)))
    return {"coverage": kappa(full, kept), "shift_spread": shift + spread, "shift": shift, "spread": spread,
            "unweighted": unweighted}


def _cell(report: dict, tokens: int) -> list[float]:
    for result in report["results"]:
        if result["method"] == "dcp" and result["tokens"] == tokens:
            return result["outcomes"]
    raise InputError(f"{report.get('split')}: no dcp@{tokens} cell")


def _full(report: dict) -> list[float]:
    return next(r["outcomes"] for r in report["results"] if r["method"] == "full")


def per_image(outcomes: list[float], n_per_image: int) -> np.ndarray:
    return np.asarray(outcomes, np.float64).reshape(-1, n_per_image).mean(axis=1)  # (n_images,)


def gate_accuracy(kappa: np.ndarray, acgr: np.ndarray, tatcs: np.ndarray, tau: float) -> float:
    """Accuracy of dcp with this τ: TATCS's per-image accuracy where κ > τ, ACGR's elsewhere."""
    return float(np.where(kappa > tau, tatcs, acgr).mean())


def analyse(kappas: dict[str, np.ndarray], full: np.ndarray, acgr: np.ndarray, tatcs: np.ndarray) -> dict:
    out = {}
    for form, values in kappas.items():
        quantiles = [float(q) for q in np.quantile(values, np.linspace(0, 1, 11))]
        taus = [-math.inf] + quantiles  # -inf: always TATCS; the max quantile: never
        out[form] = {
            "spearman_loss": stats.spearman(values, full - acgr),
            "spearman_tatcs_gain": stats.spearman(values, tatcs - acgr),
            "spearman_loss_vs_in_use": stats.spearman_gap(values, kappas[IN_USE], full - acgr),
            "tau_accuracy": [(tau, gate_accuracy(values, acgr, tatcs, tau)) for tau in taus],
        }
    return out


def shared_tau(per_budget: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The one τ for every budget: (κ, ACGR, TATCS per image) per budget → (τ, mean gated accuracy over the
    budgets). Candidates are every κ seen; ties go to the smallest τ (from -inf, always TATCS), so the gate
    keeps ACGR's tokens only where that scored better."""
    candidates = [-math.inf] + sorted({float(k) for values, _, _ in per_budget for k in values})
    scored = [(tau, float(np.mean([gate_accuracy(values, acgr, tatcs, tau) for values, acgr, tatcs in per_budget])))
              for tau in candidates]
    return max(scored, key=lambda pair: pair[1])


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.kappa_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("acgr", help="dcp-eval --json report with tau=1e6 (ACGR on every image)")
    parser.add_argument("tatcs", help="the same run with tau=0 (TATCS on every image)")
    parser.add_argument("--prune-option", action="append", default=[], metavar="NAME=VALUE",
                        help="the knobs both runs had besides tau")
    parser.add_argument("--json", default=None, metavar="FILE")
    cli_options.add_model_options(parser, default="demo")
    args = parser.parse_args(argv)
    reports = [json.loads(open(path, encoding="utf-8").read()) for path in (args.acgr, args.tatcs)]
    n_images = reports[0]["n_images"]
    n_per_image = reports[0]["n"] // n_images
    budgets = sorted({r["tokens"] for r in reports[0]["results"] if r["method"] == "dcp"})
    options = cli_options.parse_prune_options(args.prune_option)
    seeds = scenes.image_seeds(reports[0]["split"], n_images)
    kappas = {k: {form: [] for form in FORMS} for k in budgets}
    with Pipeline(models.resolve(args.model, args.mmproj), PipelineOptions(vision_dtype="float32")) as pipe:
        for seed in seeds:
            image = pipe.encode_image(scenes.render_scene(seed)[0])
            for k in budgets:
                kept = select(image.features, image.cls_attn, keys=image.keys, n_keep=k, method="acgr", options=options)
                for form, value in kappa_forms(image.features, kept.features, kept.masses).items():
                    kappas[k][form].append(value)
    full = per_image(_full(reports[0]), n_per_image)
    result, gated = {}, []
    for k in budgets:
        acgr, tatcs = per_image(_cell(reports[0], k), n_per_image), per_image(_cell(reports[1], k), n_per_image)
        result[k] = analyse({f: np.asarray(v) for f, v in kappas[k].items()}, full, acgr, tatcs)
        gated.append((np.asarray(kappas[k][IN_USE]), acgr, tatcs))
        print(f"\n{k} tokens: ACGR {100 * acgr.mean():.1f}%, TATCS {100 * tatcs.mean():.1f}%, "
              f"per image better with TATCS {int((tatcs > acgr).sum())}, with ACGR {int((acgr > tatcs).sum())}")
        print(f"| κ form | ρ(κ, ACGR loss) | − {IN_USE}'s [95% CI] | ρ(κ, TATCS gain) | best τ (accuracy) |\n"
              "|---|---|---|---|---|")
        for form, r in result[k].items():
            tau, accuracy = max(r["tau_accuracy"], key=lambda pair: pair[1])
            gap, (low, high) = r["spearman_loss_vs_in_use"]
            print(f"| {form} | {_number(r['spearman_loss'])} | {_number(gap)} [{_number(low)}, {_number(high)}] | "
                  f"{_number(r['spearman_tatcs_gain'])} | {tau:.3g} ({100 * accuracy:.1f}%) |")
    tau, accuracy = shared_tau(gated)
    always = float(np.mean([tatcs.mean() for _, _, tatcs in gated]))
    print(f"\nτ for every budget ({IN_USE}): {tau:.4g}, mean gated accuracy {100 * accuracy:.2f}% "
          f"(always TATCS: {100 * always:.2f}%)")
    result["shared_tau"] = {"form": IN_USE, "tau": tau, "accuracy": accuracy, "always_tatcs": always}
    if args.json:
        write_json(args.json, result)
    return result


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3f}"


def main(argv: list[str] | None = None) -> None:
    run_command("kappa_gate", run, argv)


if __name__ == "__main__":
    main()
