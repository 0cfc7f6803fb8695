"""Pure-NumPy twin of native/: every token selector, written to be read and trusted.

Tests require dcp_desktop._native to give identical indices and masses, features within float
tolerance, and the same κ. `prune` has the same signature as `_native.prune`. Inputs are assumed
valid, because dcp_desktop.prune.select checks them first.

This file holds the dispatcher, κ, the helpers every method shares (the twins of
native/prune_internal.h), and the simple selectors (full, pool, fastervlm, random); baselines.py
and dcp.py hold the rest, as in native/.

The exactness rule: both implementations must make the same choices (top-k, neighbours, centres,
picks), so every score that is compared is built from the same IEEE operations in the same fixed
order on both sides, and ties break the same way. Sums that decide anything go through `lane_dot`,
which replays native lane_dot<Acc, Lanes> lane by lane; a NumPy reduction (sum, einsum, @) sums in
an order of its own and may differ from native in the last bit, so it only shapes output values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_U64_MASK = (1 << 64) - 1

# Must equal dcp_options_default() in native/prune.cpp (a test holds them equal). The DCP-Prune knobs were
# calibrated on the validation split (docs/results/calibration-validation.md).
DEFAULT_OPTIONS = {
    "acgr_n_neighbors": 4,
    "acgr_spatial_weight": 0.5,
    "acgr_spatial_sigma": 2.0,
    "tau": 0.2,
    "tatcs_text_weight": 0.25,
    "tatcs_relevance_mix": 0.5,
    "visionzip_dominant_ratio": 54.0 / 64.0,
    "cdpruner_theta": 0.5,
}


@dataclass(frozen=True)
class Tokens:
    """One image's tokens, as in prune.h's dcp_tokens (optional arrays filled with their defaults)."""

    features: np.ndarray  # (n, d) float32
    cls_attn: np.ndarray | None  # (n,)
    keys: np.ndarray | None  # (n, dk)
    masses: np.ndarray  # (n,) float32, 1 when not given
    patch_idx: np.ndarray  # (n,) int32, 0..n-1 when not given
    text: np.ndarray | None  # (t, d), None when absent or empty
    grid: tuple[int, int]

    @property
    def n(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Output:
    """What a method returns: token k sits on input row rows[k] (any order; sorted later);
    assignment[i] is the token k (method-local, an index into rows) input row i went to, -1 if dropped."""

    rows: np.ndarray  # (K,) int
    features: np.ndarray  # (K, d) float32
    masses: np.ndarray  # (K,) float32
    assignment: np.ndarray  # (n,) int, method-local token per input row, -1 if dropped
    used_tatcs: bool = False


# ---- shared helpers (the twins of prune_internal.h) ------------------------------------------------

def lane_dot(a: np.ndarray, b: np.ndarray, dtype, lanes: int) -> np.ndarray:
    """Σ_k a[..., k]·b[..., k] (a and b broadcast) summed as native lane_dot<dtype, lanes>: lane l
    takes k = l, l + lanes, ... in turn, then the lanes are added pairwise ((0+1), (2+3), ...,
    then again) down to one."""
    a, b = _in_lanes(a, dtype, lanes), _in_lanes(b, dtype, lanes)  # (..., chunks, lanes)
    sums = np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-2] + (lanes,), dtype)  # (..., lanes)
    for k in range(a.shape[-2]):
        sums += a[..., k, :] * b[..., k, :]
    while sums.shape[-1] > 1:
        sums = sums[..., 0::2] + sums[..., 1::2]
    return sums[..., 0]


def _in_lanes(x: np.ndarray, dtype, lanes: int) -> np.ndarray:
    """(..., d) → (..., ceil(d / lanes), lanes) in dtype, zero-padded (adding 0 changes no sum)."""
    x = np.asarray(x).astype(dtype)
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -x.shape[-1] % lanes)])
    return x.reshape(*x.shape[:-1], x.shape[-1] // lanes, lanes)


def dot_f64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_k a[..., k]·b[..., k] in float64, 8 lanes, as native dot_f64 (a float32 product is exact)."""
    return lane_dot(a, b, np.float64, 8)


def best_row(score: np.ndarray, excluded: np.ndarray) -> int:
    """The row with the highest score among those not excluded; ties go to the lower row."""
    return int(np.argmax(np.where(excluded, -np.inf, score)))


def top_k(score: np.ndarray, k: int) -> np.ndarray:
    """The k rows with the highest score, best first; ties go to the lower row."""
    return np.argsort(-np.asarray(score), kind="stable")[:k]


def float32_option(options: dict, name: str) -> float:
    """An option as native code sees it (dcp_options holds float32)."""
    return float(np.float32(options[name]))


def selection(tokens: Tokens, rows) -> Output:
    """The input rows `rows`, unchanged, with their input masses."""
    rows = np.asarray(rows, dtype=np.int64)
    assignment = np.full(tokens.n, -1, np.int64)
    assignment[rows] = np.arange(len(rows))
    return Output(rows, tokens.features[rows], tokens.masses[rows], assignment)


# ---- κ -----------------------------------------------------------------------------------------

def _mean_and_spread(x: np.ndarray, masses: np.ndarray | None) -> tuple[np.ndarray, float]:
    x = x.astype(np.float64)
    m = np.ones(len(x)) if masses is None else masses.astype(np.float64)
    mean = (m[:, None] * x).sum(0) / m.sum()  # (d,)
    spread = float((m * ((x - mean) ** 2).sum(1)).sum() / m.sum())
    return mean, spread


def kappa(a: np.ndarray, masses_a: np.ndarray | None, b: np.ndarray, masses_b: np.ndarray | None) -> float:
    """κ from set a to set b: mean shift in units of a's spread + |log spread ratio| / 2 (prune.h)."""
    mean_a, spread_a = _mean_and_spread(a, masses_a)
    mean_b, spread_b = _mean_and_spread(b, masses_b)
    eps = 1e-6 * float((a.astype(np.float64) ** 2).sum() / len(a)) + 1e-30
    shift = float(((mean_b - mean_a) ** 2).sum())
    return math.sqrt(shift / (spread_a + eps)) + abs(0.5 * math.log((spread_b + eps) / (spread_a + eps)))


# ---- full, pool, fastervlm, random -----------------------------------------------------------------

def full(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    return selection(tokens, np.arange(tokens.n))


def pool_cell_grid(n_keep: int) -> tuple[int, int]:
    """rows × cols == n_keep with rows the largest divisor <= sqrt(n_keep): 16 → 4×4, 32 → 4×8."""
    rows = max(r for r in range(1, math.isqrt(n_keep) + 1) if n_keep % r == 0)
    return rows, n_keep // rows


def _cell_bounds(i: int, n: int, parts: int) -> tuple[int, int]:
    """adaptive_avg_pool2d's cell i along an axis of n patches: [floor(i*n/parts), ceil((i+1)*n/parts))."""
    return (i * n) // parts, -(-(i + 1) * n // parts)


def pool(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    grid_h, grid_w = tokens.grid
    rows, cols = pool_cell_grid(n_keep)
    patches = tokens.features.reshape(grid_h, grid_w, -1)  # (grid_h, grid_w, d)
    centres, means, masses = [], [], []
    assignment = np.full((grid_h, grid_w), -1, np.int64)  # overlapping cells: the first in raster order
    for i in range(rows):
        r0, r1 = _cell_bounds(i, grid_h, rows)
        for j in range(cols):
            c0, c1 = _cell_bounds(j, grid_w, cols)
            cell = patches[r0:r1, c0:c1].reshape(-1, patches.shape[2])  # (patches in cell, d)
            means.append(cell.astype(np.float64).mean(axis=0))  # (d,)
            masses.append(len(cell))
            centres.append((r0 + r1 - 1) // 2 * grid_w + (c0 + c1 - 1) // 2)  # the centre patch
            cell_assignment = assignment[r0:r1, c0:c1]  # a view
            cell_assignment[cell_assignment < 0] = len(centres) - 1
    return Output(np.array(centres), np.array(means, dtype=np.float32), np.array(masses, dtype=np.float32),
                  assignment.ravel())


def fastervlm(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    return selection(tokens, top_k(tokens.cls_attn, n_keep))


def splitmix64(seed: int):
    """The generator documented in prune.h, in Python ints masked to 64 bits."""
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & _U64_MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MASK
        yield z ^ (z >> 31)


def random(tokens: Tokens, n_keep: int, seed: int, options: dict) -> Output:
    perm = list(range(tokens.n))
    draws = splitmix64(seed)
    # Partial Fisher–Yates: perm[:n_keep] becomes a uniform random subset.
    for i in range(n_keep):
        j = i + next(draws) % (tokens.n - i)
        perm[i], perm[j] = perm[j], perm[i]
    return selection(tokens, perm[:n_keep])


# ---- dispatch ----------------------------------------------------------------------------------

from . import baselines, dcp  # noqa: E402  (they use the helpers above)

SELECTORS = {"full": full, "pool": pool, "fastervlm": fastervlm, "random": random,
             "visionzip": baselines.visionzip, "divprune": baselines.divprune, "cdpruner": baselines.cdpruner,
             "acgr": dcp.acgr, "tatcs": dcp.tatcs, "dcp": dcp.dcp}


def prune(features, cls_attn, keys, masses, patch_idx, text, grid_h, grid_w, n_keep, method, seed, options):
    """Same contract as dcp_desktop._native.prune, for already-validated inputs."""
    n = len(features)
    tokens = Tokens(
        features=features, cls_attn=cls_attn, keys=keys,
        masses=np.ones(n, np.float32) if masses is None else masses,
        patch_idx=np.arange(n, dtype=np.int32) if patch_idx is None else patch_idx,
        text=text if text is not None and len(text) else None, grid=(grid_h, grid_w))
    out = SELECTORS[method](tokens, n_keep, seed, {**DEFAULT_OPTIONS, **options})
    order = np.argsort(out.rows, kind="stable")  # patch order
    rank = np.empty(len(order), np.int64)  # method-local token → output token
    rank[order] = np.arange(len(order))
    assignment = np.where(out.assignment >= 0, rank[np.maximum(out.assignment, 0)], -1).astype(np.int32)  # (n,)
    kept = np.ascontiguousarray(out.features[order], dtype=np.float32)  # (K, d)
    kept_masses = np.ascontiguousarray(out.masses[order], dtype=np.float32)  # (K,)
    k = kappa(features, masses, kept, kept_masses)
    return (tokens.patch_idx[out.rows[order]].astype(np.int32), kept, kept_masses, k, out.used_tatcs,
            assignment)
