"""Pure-NumPy twin of native/prune.cpp: the same token selectors, written to be read and trusted.

Tests require dcp_desktop._native to give identical indices and masses, and features within 1e-5.
`prune` has the same positional signature as `_native.prune`. Inputs are assumed valid, because
dcp_desktop.prune.select checks them first: features (N, D) float32 and finite, cls_attn (N,)
float32 or None, N == grid_h * grid_w, n_keep allowed for the method. Every selector returns
(indices (K,) int32 ascending, features (K, D) float32, masses (K,) float32).
"""

from __future__ import annotations

import math

import numpy as np

Result = tuple[np.ndarray, np.ndarray, np.ndarray]

_U64_MASK = (1 << 64) - 1


def _selection(features: np.ndarray, indices) -> Result:
    """The rows at `indices`, in ascending index order, each standing for one patch."""
    indices = np.sort(np.asarray(indices, dtype=np.int32))  # (K,)
    return indices, features[indices], np.ones(len(indices), dtype=np.float32)


def full(features, cls_attn, grid, n_keep, seed) -> Result:
    return _selection(features, np.arange(len(features)))


def pool_cell_grid(n_keep: int) -> tuple[int, int]:
    """rows × cols == n_keep with rows the largest divisor <= sqrt(n_keep): 16 → 4×4, 32 → 4×8."""
    rows = max(r for r in range(1, math.isqrt(n_keep) + 1) if n_keep % r == 0)
    return rows, n_keep // rows


def _cell_bounds(i: int, n: int, parts: int) -> tuple[int, int]:
    """adaptive_avg_pool2d's cell i along an axis of n patches: [floor(i*n/parts), ceil((i+1)*n/parts))."""
    return (i * n) // parts, -(-(i + 1) * n // parts)


def pool(features, cls_attn, grid, n_keep, seed) -> Result:
    grid_h, grid_w = grid
    rows, cols = pool_cell_grid(n_keep)
    patches = features.reshape(grid_h, grid_w, -1)  # (grid_h, grid_w, d)
    indices, means, masses = [], [], []
    for i in range(rows):
        r0, r1 = _cell_bounds(i, grid_h, rows)
        for j in range(cols):
            c0, c1 = _cell_bounds(j, grid_w, cols)
            cell = patches[r0:r1, c0:c1].reshape(-1, patches.shape[2])  # (patches in cell, d)
            means.append(cell.astype(np.float64).mean(axis=0))  # (d,)
            masses.append(len(cell))
            indices.append((r0 + r1 - 1) // 2 * grid_w + (c0 + c1 - 1) // 2)  # the centre patch
    return (np.array(indices, dtype=np.int32),
            np.array(means, dtype=np.float32),  # (K, d)
            np.array(masses, dtype=np.float32))


def fastervlm(features, cls_attn, grid, n_keep, seed) -> Result:
    # A stable sort of -attention puts the highest first and keeps ties in index order.
    order = np.argsort(-cls_attn, kind="stable")  # (N,)
    return _selection(features, order[:n_keep])


def splitmix64(seed: int):
    """The generator documented in prune.h, in Python ints masked to 64 bits."""
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & _U64_MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64_MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64_MASK
        yield z ^ (z >> 31)


def random(features, cls_attn, grid, n_keep, seed) -> Result:
    n_tokens = len(features)
    perm = list(range(n_tokens))
    draws = splitmix64(seed)
    # Partial Fisher–Yates: perm[:n_keep] becomes a uniform random subset.
    for i in range(n_keep):
        j = i + next(draws) % (n_tokens - i)
        perm[i], perm[j] = perm[j], perm[i]
    return _selection(features, perm[:n_keep])


SELECTORS = {"full": full, "pool": pool, "fastervlm": fastervlm, "random": random}


def prune(features, cls_attn, grid_h, grid_w, n_keep, method, seed=0) -> Result:
    """Same contract as dcp_desktop._native.prune, for already-validated inputs."""
    return SELECTORS[method](features, cls_attn, (grid_h, grid_w), n_keep, seed)
