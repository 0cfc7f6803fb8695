"""Prune: keep K of an image's CLIP patch tokens (576 on LLaVA-1.5's 24×24 grid).

`select` is the one entry point for every method. It checks and converts the input, then runs the
native core (dcp_desktop._native, built from native/prune.cpp) or, with impl="reference", its
pure-NumPy twin (dcp_desktop.prune_reference); both give the same tokens.

Input conversion: features and cls_attn may be any real-valued array-like (float16, float64,
integers, non-contiguous views); they are copied to C-contiguous float32 when they are not already.
Values that overflow float32 become Inf and are rejected like NaN. Torch tensors: convert them with
`.numpy()` first.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from dcp_desktop import _native, prune_reference
from dcp_desktop.errors import InputError

METHODS = ("full", "pool", "fastervlm", "random")
_NEEDS_CLS_ATTN = frozenset({"fastervlm"})
_IMPLS = {"native": _native.prune, "reference": prune_reference.prune}


@dataclass(frozen=True, eq=False)
class Selection:
    """The kept tokens of one image. Arrays are read-only."""

    indices: np.ndarray   # (K,) int32: the patch each token sits on, raster order, ascending
    features: np.ndarray  # (K, D) float32
    masses: np.ndarray    # (K,) float32: how many original patches each token stands for
    kappa: float | None   # distribution-consistency score; None until κ is implemented


def select(features, cls_attn=None, *, n_keep: int, method: str, grid: tuple[int, int] = (24, 24),
           seed: int = 0, impl: str = "native") -> Selection:
    """Keep `n_keep` of the (grid_h*grid_w, D) patch features (raster order, no [CLS] row).

    cls_attn: (N,) [CLS]→patch attention; required by "fastervlm", checked whenever given.
    seed: drives "random" only. Raises InputError naming the argument for any bad input.
    """
    grid_h, grid_w = _check_grid(grid)
    method = _check_method(method)
    features = _check_features(features, grid_h, grid_w)  # (N, D) float32
    cls_attn = _check_cls_attn(cls_attn, method, len(features))  # (N,) float32 or None
    n_keep = _check_n_keep(n_keep, method, grid_h, grid_w)
    seed = _check_seed(seed)
    prune = _check_impl(impl)
    indices, kept, masses = prune(features, cls_attn, grid_h, grid_w, n_keep, method, seed)
    for array in (indices, kept, masses):
        array.setflags(write=False)
    return Selection(indices=indices, features=kept, masses=masses, kappa=None)


def _check_grid(grid) -> tuple[int, int]:
    try:
        grid_h, grid_w = (operator.index(side) for side in grid)
    except (TypeError, ValueError):
        grid_h = grid_w = 0
    if grid_h < 1 or grid_w < 1:
        raise InputError(f"grid: expected (rows, cols) of positive integers, got {grid!r}")
    return grid_h, grid_w


def _check_method(method) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _as_float32(name: str, values) -> np.ndarray:
    """C-contiguous float32 copy of a real-valued array-like (no copy when it already is one)."""
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{name}: expected real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become Inf, reported just below
        array = np.ascontiguousarray(array, dtype=np.float32)
    n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if n_bad:
        raise InputError(f"{name}: contains NaN or Inf ({n_bad} values); check the vision tower output")
    return array


def _check_features(features, grid_h: int, grid_w: int) -> np.ndarray:
    n_tokens = grid_h * grid_w
    shape = np.shape(features)
    if len(shape) != 2 or shape[0] != n_tokens or shape[1] < 1:
        raise InputError(f"features: expected a ({n_tokens}, D) array for a {grid_h}×{grid_w} grid, "
                         f"got shape {shape}; pass patch tokens only, without [CLS]")
    return _as_float32("features", features)


def _check_cls_attn(cls_attn, method: str, n_tokens: int) -> np.ndarray | None:
    if cls_attn is None:
        if method in _NEEDS_CLS_ATTN:
            raise InputError(f"cls_attn: method {method!r} needs the [CLS] attention row")
        return None
    shape = np.shape(cls_attn)
    if shape != (n_tokens,):
        raise InputError(f"cls_attn: expected shape ({n_tokens},), one value per patch, got shape {shape}")
    return _as_float32("cls_attn", cls_attn)


def _pool_fits(n_keep: int, grid_h: int, grid_w: int) -> bool:
    rows, cols = prune_reference.pool_cell_grid(n_keep)
    return rows <= grid_h and cols <= grid_w


def _check_n_keep(n_keep, method: str, grid_h: int, grid_w: int) -> int:
    n_tokens = grid_h * grid_w
    try:
        n_keep = operator.index(n_keep)
    except TypeError:
        raise InputError(f"n_keep: expected an integer number of image tokens, got {n_keep!r}") from None
    if not 1 <= n_keep <= n_tokens:
        raise InputError(f"n_keep: expected 1..{n_tokens} image tokens, got {n_keep}")
    if method == "full" and n_keep != n_tokens:
        raise InputError(f"n_keep: method 'full' keeps all {n_tokens} image tokens, got {n_keep}")
    if method == "pool" and not _pool_fits(n_keep, grid_h, grid_w):
        rows, cols = prune_reference.pool_cell_grid(n_keep)
        nearest = min((k for k in range(1, n_tokens + 1) if _pool_fits(k, grid_h, grid_w)),
                      key=lambda k: (abs(k - n_keep), k))
        raise InputError(f"n_keep: method 'pool' lays {n_keep} tokens out as {rows}×{cols}, which does "
                         f"not fit the {grid_h}×{grid_w} patch grid; try n_keep={nearest}")
    return n_keep


def _check_seed(seed) -> int:
    try:
        value = operator.index(seed)
    except TypeError:
        value = -1
    if not 0 <= value < 2**64:
        raise InputError(f"seed: expected an integer in 0..2**64-1, got {seed!r}")
    return value


def _check_impl(impl: str):
    if impl not in _IMPLS:
        raise InputError(f"impl: expected 'native' or 'reference', got {impl!r}")
    return _IMPLS[impl]
