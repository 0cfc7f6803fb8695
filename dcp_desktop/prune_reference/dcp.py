"""NumPy twins of native/dcp.cpp: ACGR, TATCS and DCP-Prune (contracts in native/prune.h).

Every choice (an anchor's neighbours, a centre, a cluster, a representative) must equal native's,
so every score that is compared replays native's arithmetic bit for bit:
- unit rows (`exact_unit_rows`): the norm summed by `dot_f64` (float64, 8 lanes), then x·(1/norm)
  rounded to float32;
- cosines of unit rows (`cosines`): float32 products summed by `lane_dot` in 16 lanes, then float64;
- everything after a cosine in float64, with math.exp (libm, as native) for the spatial kernel.
Sums that only shape output features and masses need not replay native's order.
"""

from __future__ import annotations

import math

import numpy as np

from .common import F32_LANES, Output, Tokens, best_row, cosines, exact_unit_rows, float32_option, kappa, lane_dot, top_k
KAPPA_NOISE = np.float32(1e-4)  # dcp: a κ at or below this is rounding noise, not a shift (native k_kappa_noise)


# ---- acgr --------------------------------------------------------------------------------------

def acgr(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    return anchor_context_recovery(tokens, n_keep, options)


def anchor_context_recovery(tokens: Tokens, n_anchors: int, options: dict) -> Output:
    anchors = np.sort(top_k(tokens.cls_attn, n_anchors))  # (M,) ascending: ties go to the lower row
    context = np.setdiff1d(np.arange(tokens.n), anchors)  # (C,)
    u = exact_unit_rows(tokens.keys if tokens.keys is not None else tokens.features)  # (n, ds)
    affinity = cosines(u[context, None], u[None, anchors]) \
        + _spatial_kernel(tokens, context, anchors, options)  # (C, M)
    n_neighbors = min(int(options["acgr_n_neighbors"]), n_anchors)
    nearest = np.argsort(-affinity, axis=1, kind="stable")[:, :n_neighbors]  # (C, nb) best first
    linked = np.take_along_axis(affinity, nearest, axis=1)  # (C, nb)
    linked = np.where(linked > 0, linked, 0.0)  # only positive links count
    total = linked.sum(axis=1, keepdims=True)  # (C, 1)
    w = np.divide(linked, total, out=np.zeros_like(linked), where=total > 0)  # (C, nb) edge weights
    return _recover(tokens, anchors, context, nearest, w)


def _spatial_kernel(tokens: Tokens, context: np.ndarray, anchors: np.ndarray, options: dict) -> np.ndarray:
    """λ·exp(-(Δr² + Δc²) / (2σ²)) as native computes it: λ·(g(|Δr|)·g(|Δc|)), g from libm exp."""
    sigma = float32_option(options, "acgr_spatial_sigma")
    weight = float32_option(options, "acgr_spatial_weight")

    def axis_table(n: int) -> np.ndarray:  # (n,) g(k) = exp(-k² / (2σ²))
        return np.array([math.exp(-(float(k) * float(k)) / (2.0 * sigma * sigma)) for k in range(n)])

    grid_h, grid_w = tokens.grid
    rows, cols = np.divmod(tokens.patch_idx.astype(np.int64), grid_w)  # (n,), (n,)
    d_rows = np.abs(rows[context, None] - rows[None, anchors])  # (C, M)
    d_cols = np.abs(cols[context, None] - cols[None, anchors])  # (C, M)
    return weight * (axis_table(grid_h)[d_rows] * axis_table(grid_w)[d_cols])


def _handover_weights(cls_attn: np.ndarray) -> np.ndarray:
    """ρ = clamp(s / mean s, 0, 1); all 1 when mean s <= 0."""
    s = cls_attn.astype(np.float64)  # (n,)
    mean = s.sum() / len(s)
    return np.clip(s / mean, 0.0, 1.0) if mean > 0 else np.ones(len(s))


def _recover(tokens: Tokens, anchors: np.ndarray, context: np.ndarray, nearest: np.ndarray,
             w: np.ndarray) -> Output:
    """Anchors absorb their linked context rows: features by ρ·w·m-weighted mean, masses by w·m."""
    x = tokens.features.astype(np.float64)  # (n, d)
    m = tokens.masses.astype(np.float64)  # (n,)
    pull = w * _handover_weights(tokens.cls_attn)[context, None] * m[context, None]  # (C, nb)
    n_anchors = len(anchors)  # nearest holds positions 0..M-1 into anchors
    numerator = m[anchors, None] * x[anchors]  # (M, d)
    np.add.at(numerator, nearest, pull[..., None] * x[context, None])
    denominator = m[anchors] + np.bincount(nearest.ravel(), pull.ravel(), minlength=n_anchors)  # (M,)
    mass = m[anchors] + np.bincount(nearest.ravel(), (w * m[context, None]).ravel(), minlength=n_anchors)  # (M,)
    assignment = np.full(tokens.n, -1, np.int64)  # anchors: themselves; context: the largest w_ca
    assignment[anchors] = np.arange(n_anchors)
    assignment[context] = np.where(w[:, 0] > 0, nearest[:, 0], -1)  # best first; ties: the lower anchor
    return Output(anchors, (numerator / denominator[:, None]).astype(np.float32), mass.astype(np.float32),
                  assignment)


# ---- tatcs -------------------------------------------------------------------------------------

def tatcs(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    x = exact_unit_rows(tokens.features)  # (n, d)
    relevance = _normalised_relevance(tokens, x)  # (n,)
    centres, similarity = _greedy_centres(x, _seed_scores(tokens.cls_attn, relevance), n_keep)  # (K,), (K, n)
    cluster = _assign_clusters(centres, similarity, relevance, float32_option(options, "tatcs_text_weight"))
    representative = _reselect(tokens, x, cluster, n_keep, relevance, float32_option(options, "tatcs_relevance_mix"))
    return _merge_into_representatives(tokens, x, cluster, representative)


def _normalised_relevance(tokens: Tokens, x: np.ndarray) -> np.ndarray:
    """r̃: max_j cos(x_i, text_j) min-max normalised to [0, 1]; all 1 without text or when constant."""
    if tokens.text is None:
        return np.ones(tokens.n)
    relevance = cosines(x[:, None], exact_unit_rows(tokens.text)[None]).max(axis=1)  # (n,)
    low, high = relevance.min(), relevance.max()
    return (relevance - low) / (high - low) if high > low else np.ones(tokens.n)


def _seed_scores(cls_attn: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """g = s̃·r̃ with s̃ = s / max s (1 when max s <= 0); all 1 when max g <= 0."""
    s = cls_attn.astype(np.float64)  # (n,)
    seed = (s / s.max() if s.max() > 0 else np.ones(len(s))) * relevance  # (n,)
    return seed if seed.max() > 0 else np.ones(len(s))


def _greedy_centres(x: np.ndarray, seed: np.ndarray, n_centres: int) -> tuple[list[int], np.ndarray]:
    """Greedy representative initialisation: the best seed first, then each time the row farthest
    from every centre, favouring high seeds (distance·(½ + ½·g/max g)); the best remaining seed
    once no distance is left (only duplicates). Returns the centres and ⟨x̂_i, x̂_centre⟩."""
    preference = 0.5 + 0.5 * seed / seed.max()  # (n,)
    min_distance = np.full(len(seed), np.inf)  # (n,) to the nearest centre
    is_centre = np.zeros(len(seed), dtype=bool)
    similarity = np.zeros((n_centres, len(seed)), np.float32)  # (K, n)
    centres = [best_row(seed, is_centre)]
    for k in range(n_centres):
        is_centre[centres[k]] = True
        similarity[k] = lane_dot(x, x[centres[k]], np.float32, F32_LANES)
        min_distance = np.minimum(min_distance, 1.0 - similarity[k].astype(np.float64))
        if k + 1 < n_centres:
            score = min_distance * preference  # (n,)
            best = best_row(score, is_centre)
            centres.append(best if score[best] > 0 else best_row(seed, is_centre))
    return centres, similarity


def _assign_clusters(centres: list[int], similarity: np.ndarray, relevance: np.ndarray,
                     text_weight: float) -> np.ndarray:
    """cluster[i] = the centre maximising ⟨x̂_i, x̂_c⟩ - λ_t·|r̃_i - r̃_c| (ties: the earlier centre)."""
    gap = np.abs(relevance[:, None] - relevance[None, centres])  # (n, K)
    cluster = np.argmax(similarity.T.astype(np.float64) - text_weight * gap, axis=1)  # (n,)
    cluster[centres] = np.arange(len(centres))  # centres belong to themselves
    return cluster


def _reselect(tokens: Tokens, x: np.ndarray, cluster: np.ndarray, n_clusters: int,
              relevance: np.ndarray, eta: float) -> np.ndarray:
    """Per cluster, the member with the best η·r̃_i + (1-η)·⟨x̂_i, μ_Q⟩ (ties: the lower row),
    μ_Q the unit vector of Σ m_i·x̂_i (summed in row order, as native)."""
    weighted = tokens.masses.astype(np.float64)[:, None] * x.astype(np.float64)  # (n, d)
    sums = np.zeros((n_clusters, x.shape[1]))  # (K, d)
    for i, k in enumerate(cluster):
        sums[k] += weighted[i]
    mu = exact_unit_rows(sums)  # (K, d)
    score = eta * relevance + (1.0 - eta) * cosines(x, mu[cluster])  # (n,)
    return np.array([best_row(score, cluster != k) for k in range(n_clusters)])


def _merge_into_representatives(tokens: Tokens, x: np.ndarray, cluster: np.ndarray,
                                representative: np.ndarray) -> Output:
    """Cluster → its representative's row: ω_i = m_i·max(0, ⟨x̂_i, x̂_rep⟩), ω_rep = m_rep,
    feature = Σ ω_i·x_i / Σ ω_i, mass = Σ m_i."""
    m = tokens.masses.astype(np.float64)  # (n,)
    rep = representative[cluster]  # (n,) each row's representative
    omega = m * np.maximum(0.0, cosines(x, x[rep]))  # (n,)
    omega[representative] = m[representative]
    sums = np.zeros((len(representative), x.shape[1]))  # (K, d)
    np.add.at(sums, cluster, omega[:, None] * tokens.features.astype(np.float64))
    weight = np.bincount(cluster, omega, minlength=len(representative))  # (K,)
    mass = np.bincount(cluster, m, minlength=len(representative))  # (K,)
    return Output(representative, (sums / weight[:, None]).astype(np.float32), mass.astype(np.float32),
                  assignment=np.asarray(cluster, np.int64), used_tatcs=True)


# ---- dcp ---------------------------------------------------------------------------------------

def dcp(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    recovered = anchor_context_recovery(tokens, n_keep, options)
    shift = kappa(tokens.features, tokens.masses, recovered.features, recovered.masses)
    if np.float32(shift) <= max(np.float32(options["tau"]), KAPPA_NOISE):  # float32, as native
        return recovered
    return tatcs(tokens, n_keep, seed, options)
