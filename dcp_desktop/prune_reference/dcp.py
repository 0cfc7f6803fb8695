"""NumPy twins of native/dcp.cpp: ACGR, TATCS and DCP-Prune (contracts in native/prune.h).

Every choice (an anchor's neighbours, a centre, a cluster, a representative) must equal native's,
so every score that is compared replays native's arithmetic bit for bit:
- unit rows (`exact_unit_rows`): the norm summed by `dot_f64` (float64, 8 lanes), then x·(1/norm)
  rounded to float32;
- cosines of unit rows (`cosines`): float32 products summed by `lane_dot` in 16 lanes, then float64;
- everything after a cosine in float64, with math.exp (libm, as native) for the spatial kernel;
- ACGR's recovery sums in native's order (own term, then context rows ascending, links best first), so
  the recovered features are bit-identical too and TATCS can choose among them.

Spec decisions of the second build (DESIGN.md, "DCP-Prune as we build it"), each a paired ablation on
the demo model's validation split (100 images × 4 questions, mass bias on; docs/dcp-prune.md has the
table; "points" are accuracy points at 16 / 32 tokens against the first build's DCP):
- The LLM sees each token's mass (--mass-bias on, ln m_k on its attention logits): +6.2 / +6.2 points
  for dcp, +7.0 / +9.5 for divprune, +6.0 / +9.5 for cdpruner (all p < 0.001); so every method returns
  masses, selection methods by giving each dropped patch to its nearest kept token.
- TATCS re-clusters the input tokens, not ACGR's recovered anchors (dcp_anchors_per_token = 0). The
  figure's sequence, TATCS on a·K recovered anchors, loses more the fewer anchors it has: a = 2:
  -13.0 / -2.8, a = 4: -3.2 / +0.2, a = 8: +1.2 / +2.5, the input tokens: +2.0 / +2.8. Anchors chosen by
  [CLS] attention miss image regions, and recovery cannot bring back what no anchor resembles.
- TATCS re-selects one real token per cluster, with the cluster's mass (tatcs_reselect = 1): against
  merging the cluster into its representative, +1.2 / +1.5 points (p 0.38 / 0.03).
- No text term (tatcs_use_text = 0). The relevance of the named object's patches has a median AUC of
  0.18 over all question tokens, 0.14 over colour and shape words only, 0.12 in the LLM's space
  (159 validation questions; [CLS] attention: 0.93), below chance, so by the rule (AUC >= 0.6) it is not
  a text signal. Dropping it cost -0.8 / -2.8 points (p 0.72 / 0.05): it shapes the clusters in a way
  that helps a little, but not by finding what the question asks about (it acts through the
  re-selection mix). Re-selecting by [CLS] attention instead (tatcs_reselect_by = 1): +0.5 / +1.5 points
  over text-free (p 0.83 / 0.24), not a win, so 0.
- κ is coverage (common.kappa: 1 − the mass-weighted mean best cosine of the input rows to the kept
  ones). Demo v3, validation (kappa_gate, 100 images): its Spearman with ACGR's per-image accuracy loss
  is +0.36 / +0.41 (+0.15 at 64), against −0.02 / +0.13 for the first form, mean shift + spread
  (difference +0.38 [+0.11, +0.62] / +0.28 [+0.11, +0.44]); within each method × budget, median +0.18
  against −0.04. The first form was above any useful τ on every image at 16 and 32 tokens, so ACGR
  never shaped an answer there.
- τ = 0.04, the one τ with the best mean gated accuracy over 16, 32 and 64 tokens on validation: ACGR's
  tokens stay on 12 / 27 / 60 of 100 images (those they already cover), +0.7 points over always
  re-selecting (p 0.057; TATCS's tokens beat ACGR's on most images: 41 against 9 at 16 tokens).
- ACGR's anchors keep at least half of their own feature (acgr_self_share = 0.5; with 0, -1.5 points
  at 32 tokens under anchor-TATCS, p 0.42), and a link needs a positive cosine (acgr_min_similarity = 0:
  no link on proximity alone; the same answers as -1 on the demo model, whose features have no negative
  cosines). Both act only where ACGR's tokens are kept.
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
    semantic = cosines(u[context, None], u[None, anchors])  # (C, M)
    affinity = np.where(semantic > float32_option(options, "acgr_min_similarity"),  # no link on proximity alone
                        semantic + _spatial_kernel(tokens, context, anchors, options), -np.inf)  # (C, M)
    n_neighbors = min(int(options["acgr_n_neighbors"]), n_anchors)
    nearest = np.argsort(-affinity, axis=1, kind="stable")[:, :n_neighbors]  # (C, nb) best first
    linked = np.take_along_axis(affinity, nearest, axis=1)  # (C, nb)
    linked = np.where(linked > 0, linked, 0.0)  # only positive links count
    total = np.zeros(len(context))  # (C,) summed best first, as native
    for k in range(n_neighbors):
        total += linked[:, k]
    w = np.divide(linked, total[:, None], out=np.zeros_like(linked), where=total[:, None] > 0)  # (C, nb)
    return _recover(tokens, anchors, context, nearest, w, float32_option(options, "acgr_self_share"))


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
    mean = np.cumsum(s)[-1] / len(s)  # summed in row order, as native
    return np.clip(s / mean, 0.0, 1.0) if mean > 0 else np.ones(len(s))


def _recover(tokens: Tokens, anchors: np.ndarray, context: np.ndarray, nearest: np.ndarray,
             w: np.ndarray, self_share: float) -> Output:
    """Anchors absorb their linked context rows: features by ρ·w·m-weighted mean, masses by w·m; an
    anchor keeps at least `self_share` of its own feature. Every sum runs in native's order (context rows
    ascending, each row's links best first), so the recovered features are bit-identical to native's and
    TATCS can choose among them."""
    x = tokens.features.astype(np.float64)  # (n, d)
    m = tokens.masses.astype(np.float64)  # (n,)
    pull = w * _handover_weights(tokens.cls_attn)[context, None] * m[context, None]  # (C, nb)
    n_anchors = len(anchors)  # nearest holds positions 0..M-1 into anchors
    own = m[anchors, None] * x[anchors]  # (M, d)
    numerator = own.copy()  # (M, d)
    np.add.at(numerator, nearest, pull[..., None] * x[context, None])  # in (row, link) order
    denominator = m[anchors].copy()  # (M,)
    np.add.at(denominator, nearest, pull)
    mass = m[anchors].copy()  # (M,)
    np.add.at(mass, nearest, w * m[context, None])
    feature = numerator / denominator[:, None]  # (M, d)
    absorbed = denominator - m[anchors]  # (M,) ρ·w·m taken in
    diluted = (m[anchors] < self_share * denominator) & (absorbed > 0)  # own share below the floor
    if diluted.any():  # f·x_a + (1 - f)·(mean of what it absorbed)
        mean_absorbed = (numerator[diluted] - own[diluted]) / absorbed[diluted, None]
        feature[diluted] = self_share * x[anchors[diluted]] + (1.0 - self_share) * mean_absorbed
    assignment = np.full(tokens.n, -1, np.int64)  # anchors: themselves; context: the largest w_ca
    assignment[anchors] = np.arange(n_anchors)
    assignment[context] = np.where(w[:, 0] > 0, nearest[:, 0], -1)  # best first; ties: the lower anchor
    return Output(anchors, feature.astype(np.float32), mass.astype(np.float32), assignment)


# ---- tatcs -------------------------------------------------------------------------------------

def tatcs(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    x = exact_unit_rows(tokens.features)  # (n, d)
    relevance = _normalised_relevance(tokens, x) if int(options["tatcs_use_text"]) else np.ones(tokens.n)  # (n,)
    centres, similarity = _greedy_centres(x, _seed_scores(tokens.cls_attn, relevance), n_keep)  # (K,), (K, n)
    cluster = _assign_clusters(centres, similarity, relevance, float32_option(options, "tatcs_text_weight"))
    preferred = _attention_share(tokens.cls_attn) if int(options["tatcs_reselect_by"]) else relevance  # (n,)
    representative = _reselect(tokens, x, cluster, n_keep, preferred, float32_option(options, "tatcs_relevance_mix"))
    if int(options["tatcs_reselect"]):
        return _representatives(tokens, cluster, representative)
    return _merge_into_representatives(tokens, x, cluster, representative)


def _normalised_relevance(tokens: Tokens, x: np.ndarray) -> np.ndarray:
    """r̃: max_j cos(x_i, text_j) min-max normalised to [0, 1]; all 1 without text or when constant."""
    if tokens.text is None:
        return np.ones(tokens.n)
    relevance = cosines(x[:, None], exact_unit_rows(tokens.text)[None]).max(axis=1)  # (n,)
    low, high = relevance.min(), relevance.max()
    return (relevance - low) / (high - low) if high > low else np.ones(tokens.n)


def _attention_share(cls_attn: np.ndarray) -> np.ndarray:
    """s̃ = s / max s; all 1 when max s <= 0."""
    s = cls_attn.astype(np.float64)  # (n,)
    return s / s.max() if s.max() > 0 else np.ones(len(s))


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


def _representatives(tokens: Tokens, cluster: np.ndarray, representative: np.ndarray) -> Output:
    """Each cluster as its representative's own row, with the cluster's total mass."""
    mass = np.zeros(len(representative))  # (K,) summed in row order, as native
    np.add.at(mass, cluster, tokens.masses.astype(np.float64))
    return Output(representative, tokens.features[representative], mass.astype(np.float32),
                  assignment=np.asarray(cluster, np.int64), used_tatcs=True)


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
    shift = kappa(tokens.features, tokens.masses, recovered.features)
    if np.float32(shift) <= max(np.float32(options["tau"]), KAPPA_NOISE):  # float32, as native
        return recovered
    if int(options["dcp_anchors_per_token"]) == 0:  # TATCS on every input row (the first build's reading)
        return tatcs(tokens, n_keep, seed, options)
    n_anchors = min(tokens.n, int(options["dcp_anchors_per_token"]) * n_keep)
    if n_anchors > n_keep:
        recovered = anchor_context_recovery(tokens, n_anchors, options)
    anchors = recovered.rows  # (M,) ascending
    on_anchors = Tokens(features=recovered.features, cls_attn=tokens.cls_attn[anchors], keys=None,
                        masses=recovered.masses, patch_idx=tokens.patch_idx[anchors], text=tokens.text,
                        grid=tokens.grid)
    clustered = tatcs(on_anchors, n_keep, seed, options)  # over the M recovered anchors
    assignment = np.where(recovered.assignment >= 0, clustered.assignment[np.maximum(recovered.assignment, 0)], -1)
    return Output(anchors[clustered.rows], clustered.features, clustered.masses, assignment, used_tatcs=True)
