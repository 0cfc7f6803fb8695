"""NumPy twins of native/baselines.cpp: VisionZip, DivPrune, CDPruner (contracts in native/prune.h).

Every score is a cosine computed in float64 from the raw float32 rows, with each dot product summed
by `dot_f64` in the order native dot_f64 sums it. Same operations in the same order give the same
bits, so both implementations break every tie the same way, including the exact ties between
duplicate rows.
"""

from __future__ import annotations

import math

import numpy as np

from .common import Output, Tokens, best_row, dot_f64, float32_option, selection, top_k

EXHAUSTED_GAIN = 1e-10  # cdpruner: a DPP gain below this adds nothing new


# ---- exact cosines -------------------------------------------------------------------------------

def cosine(ab: np.ndarray, aa: np.ndarray, bb: np.ndarray) -> np.ndarray:
    """cos from dot products and squared norms (broadcast); 0 where either vector is zero."""
    norms = np.sqrt(aa * bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, ab / norms, 0.0)


# ---- visionzip -----------------------------------------------------------------------------------

def visionzip(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    ratio = float32_option(options, "visionzip_dominant_ratio")
    n_dom = min(n_keep, max(1, math.floor(n_keep * ratio + 0.5)))
    n_ctx = n_keep - n_dom
    dominant = top_k(tokens.cls_attn, n_dom)  # (n_dom,)
    if n_ctx == 0:
        return selection(tokens, dominant)
    rest = np.setdiff1d(np.arange(tokens.n), dominant)  # (|R|,) ascending
    target_pos = np.arange(n_ctx) * len(rest) // n_ctx  # (n_ctx,) uniform spacing
    cluster = _nearest_targets(tokens, rest, target_pos)  # (|R|,) index into the targets
    masses = tokens.masses[rest].astype(np.float64)  # (|R|,)
    cluster_mass = np.bincount(cluster, weights=masses, minlength=n_ctx)  # (n_ctx,) summed in row order
    cluster_sum = np.zeros((n_ctx, tokens.features.shape[1]))  # (n_ctx, d)
    np.add.at(cluster_sum, cluster, masses[:, None] * tokens.features[rest])
    assignment = np.full(tokens.n, -1, np.int64)  # dominant rows: themselves; the rest: their target
    assignment[dominant] = np.arange(n_dom)
    assignment[rest] = n_dom + cluster
    return Output(
        rows=np.concatenate([dominant, rest[target_pos]]),
        features=np.concatenate([tokens.features[dominant], cluster_sum / cluster_mass[:, None]]).astype(np.float32),
        masses=np.concatenate([tokens.masses[dominant], cluster_mass.astype(np.float32)]),
        assignment=assignment)


def _nearest_targets(tokens: Tokens, rest: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
    """For each row of `rest`, the target it merges into: a target keeps itself, every other row
    joins its most cosine-similar target on keys (else features); ties go to the lower target."""
    semantic = tokens.keys if tokens.keys is not None else tokens.features
    rows, targets = semantic[rest], semantic[rest[target_pos]]  # (|R|, ds), (n_ctx, ds)
    similarity = cosine(dot_f64(rows[:, None], targets[None]), dot_f64(rows, rows)[:, None],
                        dot_f64(targets, targets)[None])  # (|R|, n_ctx)
    cluster = np.argmax(similarity, axis=1)  # (|R|,) first maximum = lower target row
    cluster[target_pos] = np.arange(len(target_pos))
    return cluster


# ---- divprune ------------------------------------------------------------------------------------

def divprune(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    x = tokens.features  # (n, d)
    norm2 = dot_f64(x, x)  # (n,)
    picked = np.zeros(tokens.n, dtype=bool)
    min_distance = np.full(tokens.n, np.inf)  # (n,) to the picked rows
    rows = [_least_typical_row(x, norm2)]
    while True:
        picked[rows[-1]] = True
        if len(rows) == n_keep:
            break
        distance = 1.0 - cosine(dot_f64(x, x[rows[-1]]), norm2, norm2[rows[-1]])  # (n,)
        min_distance = np.minimum(min_distance, distance)
        rows.append(best_row(min_distance, picked))
    return selection(tokens, rows)


def _least_typical_row(x: np.ndarray, norm2: np.ndarray) -> int:
    """The row least cosine-similar to the mean unit row; ties go to the lower row."""
    norms = np.sqrt(norm2)[:, None]  # (n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(norms > 0, x.astype(np.float64) / norms, 0.0)  # (n, d)
    direction = np.zeros(x.shape[1])  # (d,) Σ unit rows, summed in row order as native does
    for row in unit:
        direction += row
    similarity = cosine(dot_f64(x, direction), norm2, dot_f64(direction, direction))  # (n,)
    return int(np.argmin(similarity))


# ---- cdpruner ------------------------------------------------------------------------------------

def cdpruner(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    x = tokens.features  # (n, d)
    norm2 = dot_f64(x, x)  # (n,)
    w = _quality_weights(tokens, norm2, float32_option(options, "cdpruner_theta"))  # (n,)
    d2 = np.where(norm2 > 0, w * w, 0.0)  # (n,) L_ii; a zero row adds nothing
    c = np.zeros((n_keep, tokens.n))  # (n_keep, n) Cholesky factors, one row per pick
    picked = np.zeros(tokens.n, dtype=bool)
    rows = []
    for step in range(n_keep):
        j = best_row(d2, picked)
        if d2[j] < EXHAUSTED_GAIN:
            rest = np.flatnonzero(~picked)
            rest = rest[np.argsort(-w[rest], kind="stable")]  # highest weight first, ties: lower row
            rows.extend(rest[: n_keep - len(rows)])
            break
        rows.append(j)
        picked[j] = True
        c_dot = np.zeros(tokens.n)  # (n,) ⟨c_j, c_i⟩, summed over the steps in order
        for k in range(step):
            c_dot += c[k, j] * c[k]
        kernel = w[j] * w * cosine(dot_f64(x, x[j]), norm2, norm2[j])  # (n,) L_ji
        e = np.where(picked, 0.0, (kernel - c_dot) / np.sqrt(d2[j]))  # (n,)
        c[step] = e
        d2 = d2 - e * e
    return selection(tokens, rows)


def _quality_weights(tokens: Tokens, norm2: np.ndarray, theta: float) -> np.ndarray:
    """1 without text, else (1 - θ) + θ·r̃ with r̃ the min-max normalised relevance
    r_i = max_j cos(x_i, text_j) (all 1 when r is constant)."""
    if tokens.text is None:
        return np.ones(tokens.n)
    text = tokens.text  # (t, d)
    relevance = cosine(dot_f64(tokens.features[:, None], text[None]), norm2[:, None],
                       dot_f64(text, text)[None]).max(axis=1)  # (n,)
    low, high = relevance.min(), relevance.max()
    normalised = (relevance - low) / (high - low) if high > low else np.ones(tokens.n)
    return (1.0 - theta) + theta * normalised
