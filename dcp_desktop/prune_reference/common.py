"""What every NumPy twin shares: the token set, a method's output, the helpers (the twins of
native/prune_internal.h) and κ.

The exactness rule: both implementations must make the same choices (top-k, neighbours, centres,
picks), so every score that is compared is built from the same IEEE operations in the same fixed
order on both sides, and ties break the same way. Sums that decide anything go through `lane_dot`,
which replays native lane_dot<Acc, Lanes> lane by lane; a NumPy reduction (sum, einsum, @) sums in
an order of its own and may differ from native in the last bit, so it only shapes output values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


# ---- helpers (the twins of prune_internal.h) -------------------------------------------------------

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


F32_LANES = 16  # native cosine_f32


def exact_unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit length as float32, bit-identical to native; zero rows stay zero."""
    norm = np.sqrt(dot_f64(x, x))  # (n,)
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)  # (n,)
    return (x.astype(np.float64) * scale[:, None]).astype(np.float32)  # (n, d)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """⟨a_i, b_j⟩ of unit rows (broadcast over leading axes) as native cosine_f32, in float64."""
    return lane_dot(a, b, np.float32, F32_LANES).astype(np.float64)


def selection(tokens: Tokens, rows) -> Output:
    """The input rows `rows`, unchanged; every other row joins the kept row its feature is most
    cosine-similar to (ties: the lower kept row), whose mass grows by its mass (native emit_selection)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # (K,) patch order, as native
    assignment = np.full(tokens.n, -1, np.int64)
    assignment[rows] = np.arange(len(rows))
    mass = tokens.masses[rows].astype(np.float64)  # (K,) own mass first, then the joiners' in row order
    dropped = np.flatnonzero(assignment < 0)  # (N - K,)
    if len(dropped):
        x = exact_unit_rows(tokens.features)  # (n, d)
        nearest = np.argmax(cosines(x[dropped, None], x[None, rows]), axis=1)  # (N - K,) first max: lower row
        assignment[dropped] = nearest
        np.add.at(mass, nearest, tokens.masses[dropped].astype(np.float64))
    return Output(rows, tokens.features[rows], mass.astype(np.float32), assignment)


# ---- κ -----------------------------------------------------------------------------------------

def kappa(a: np.ndarray, masses_a: np.ndarray | None, b: np.ndarray) -> float:
    """κ from set a to set b: 1 − the mass-weighted mean over a's rows of each row's best cosine to a
    row of b, clamped at 0 (prune.h). The sums run in row order (cumsum), as native's."""
    unit_a, unit_b = exact_unit_rows(a), exact_unit_rows(b)
    best = np.concatenate([cosines(unit_a[i:i + 64, None], unit_b[None]).max(axis=1)  # 64 rows at a time
                           for i in range(0, len(a), 64)])  # (n_a,)
    masses = np.ones(len(a)) if masses_a is None else masses_a.astype(np.float64)
    covered, total = np.cumsum(masses * best)[-1], np.cumsum(masses)[-1]
    return max(0.0, float(1.0 - covered / total))
