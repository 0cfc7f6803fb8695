"""NumPy twins of the simple selectors in native/prune.cpp: full, pool, fastervlm, random."""

from __future__ import annotations

import math

import numpy as np

from .common import Output, Tokens, selection, top_k

_U64_MASK = (1 << 64) - 1


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
