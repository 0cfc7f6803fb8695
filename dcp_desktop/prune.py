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

import math
import operator
from dataclasses import dataclass

import numpy as np

from dcp_desktop import _native, prune_reference
from dcp_desktop.errors import InputError

METHODS = ("full", "pool", "fastervlm", "random", "visionzip", "divprune", "cdpruner", "acgr", "tatcs", "dcp")
_NEEDS_CLS_ATTN = frozenset({"fastervlm", "visionzip", "acgr", "tatcs", "dcp"})
TEXT_AWARE = frozenset({"cdpruner", "tatcs", "dcp"})  # use `text` when given, fall back without it
DEFAULT_OPTIONS = _native.default_options()
_IMPLS = {"native": _native.prune, "reference": prune_reference.prune}
_INT32_MAX = 2**31 - 1
# The ranges documented on struct dcp_options (native/prune.h) that options_are_valid enforces,
# tested on the value native sees (float32, or int32 for those in _INT_OPTIONS) so that both impls
# accept exactly the same options. name: (the range as errors state it, the test).
_OPTION_RANGES = {
    "acgr_n_neighbors": (f"a whole number in 1..{_INT32_MAX}", lambda v: v == int(v) and 1 <= v <= _INT32_MAX),
    "acgr_spatial_weight": ("a finite number >= 0", lambda v: 0 <= v < math.inf),
    "acgr_spatial_sigma": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "tau": ("a finite number >= 0", lambda v: 0 <= v < math.inf),
    "tatcs_text_weight": ("a finite number >= 0", lambda v: 0 <= v < math.inf),
    "tatcs_relevance_mix": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "visionzip_dominant_ratio": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "cdpruner_theta": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
}
_INT_OPTIONS = frozenset({"acgr_n_neighbors"})


@dataclass(frozen=True, eq=False)
class Selection:
    """The kept tokens of one image. Arrays are read-only."""

    indices: np.ndarray   # (K,) int32: the patch each token sits on, raster order, ascending
    features: np.ndarray  # (K, D) float32
    masses: np.ndarray    # (K,) float32: how many original patches each token stands for
    kappa: float          # κ: distribution shift from the input tokens to these (0 = none)
    used_tatcs: bool      # dcp: κ after ACGR exceeded tau, so TATCS re-selected the tokens
    assignment: np.ndarray  # (N,) int32: per input token, the output token (index into the K) it
                            # ended up in, -1 if dropped (merging methods map merged rows too)


def select(features, cls_attn=None, *, n_keep: int, method: str, grid: tuple[int, int] = (24, 24),
           keys=None, masses=None, patch_idx=None, text=None, options: dict | None = None,
           seed: int = 0, impl: str = "native") -> Selection:
    """Keep `n_keep` of N tokens: by default the (grid_h*grid_w, D) patch features in raster order
    (no [CLS] row); with `patch_idx`, any subset of the grid (e.g. after in-encoder pruning).

    cls_attn: (N,) [CLS]→patch attention; required by fastervlm, visionzip, acgr, tatcs, dcp.
    keys: (N, Dk) attention keys of the same layer; similarity uses them when given.
    masses: (N,) patches each token already stands for (default 1); patch_idx: (N,) ascending.
    text: (T, D) question token embeddings in the feature space, for cdpruner, tatcs and dcp. An
      empty or missing question makes them fall back to text-free scores (relevance is ignored).
    options: overrides of DEFAULT_OPTIONS (see native/prune.h). seed: drives "random" only.
    Raises InputError naming the argument for any bad input.
    """
    grid_h, grid_w = _check_grid(grid)
    method = _check_method(method)
    n_tokens = _check_n_tokens(features, patch_idx, grid_h, grid_w)
    features = _check_rows("features", features, n_tokens, None)  # (N, D) float32
    cls_attn = _check_cls_attn(cls_attn, method, n_tokens)  # (N,) float32 or None
    keys = None if keys is None else _check_rows("keys", keys, n_tokens, None)  # (N, Dk)
    masses = None if masses is None else _check_masses(masses, n_tokens)  # (N,)
    patch_idx = None if patch_idx is None else _check_patch_idx(patch_idx, grid_h * grid_w)  # (N,)
    text = None if text is None else _check_rows("text", text, None, features.shape[1])  # (T, D)
    n_keep = _check_n_keep(n_keep, method, n_tokens, grid_h, grid_w, whole_grid=patch_idx is None)
    options = _check_options(options)
    seed = _check_seed(seed)
    prune = _check_impl(impl)
    indices, kept, kept_masses, kappa, used_tatcs, assignment = prune(
        features, cls_attn, keys, masses, patch_idx, text, grid_h, grid_w, n_keep, method, seed, options)
    for array in (indices, kept, kept_masses, assignment):
        array.setflags(write=False)
    return Selection(indices=indices, features=kept, masses=kept_masses, kappa=float(kappa),
                     used_tatcs=bool(used_tatcs), assignment=assignment)


def kappa(full, kept, full_masses=None, kept_masses=None) -> float:
    """κ between a full token set and a kept one (mass-weighted); see native/prune.h."""
    full = _check_rows("full", full, None, None)
    kept = _check_rows("kept", kept, None, full.shape[1])
    full_masses = None if full_masses is None else _check_masses(full_masses, len(full))
    kept_masses = None if kept_masses is None else _check_masses(kept_masses, len(kept))
    return float(_native.kappa(full, full_masses, kept, kept_masses))


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


def _check_n_tokens(features, patch_idx, grid_h: int, grid_w: int) -> int:
    shape = np.shape(features)
    n_grid = grid_h * grid_w
    if patch_idx is None and (len(shape) != 2 or shape[0] != n_grid or shape[1] < 1):
        raise InputError(f"features: expected a ({n_grid}, D) array for a {grid_h}×{grid_w} grid, "
                         f"got shape {shape}; pass patch tokens only, without [CLS]")
    if len(shape) != 2 or shape[1] < 1 or shape[0] < 1:
        raise InputError(f"features: expected an (N, D) array, got shape {shape}")
    if patch_idx is not None and (np.shape(patch_idx) != (shape[0],) or shape[0] > n_grid):
        raise InputError(f"patch_idx: expected one grid index per feature row ({shape[0]}), "
                         f"got shape {np.shape(patch_idx)}")
    return shape[0]


def _check_rows(name: str, values, n_rows: int | None, n_cols: int | None) -> np.ndarray:
    """A 2-D float32 array with the given number of rows and/or columns (None: any)."""
    shape = np.shape(values)
    if len(shape) != 2 or (n_rows is not None and shape[0] != n_rows) or (n_cols is not None and shape[1] != n_cols) \
            or shape[1] < 1:
        want = f"({'N' if n_rows is None else n_rows}, {'D' if n_cols is None else n_cols})"
        raise InputError(f"{name}: expected shape {want}, got shape {shape}")
    return _as_float32(name, values)


def _check_masses(masses, n_tokens: int) -> np.ndarray:
    if np.shape(masses) != (n_tokens,):
        raise InputError(f"masses: expected shape ({n_tokens},), got shape {np.shape(masses)}")
    masses = _as_float32("masses", masses)
    if (masses <= 0).any():
        raise InputError(f"masses: every mass must be > 0, got minimum {masses.min()}")
    return masses


def _check_patch_idx(patch_idx, n_grid: int) -> np.ndarray:
    array = np.asarray(patch_idx)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"patch_idx: expected integers, got dtype {array.dtype}")
    if len(array) and (array.min() < 0 or array.max() >= n_grid or (np.diff(array) <= 0).any()):
        raise InputError(f"patch_idx: expected strictly ascending indices in 0..{n_grid - 1}")
    return np.ascontiguousarray(array, dtype=np.int32)


def _check_options(options) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise InputError(f"options: unknown {', '.join(unknown)}; known: {', '.join(sorted(DEFAULT_OPTIONS))}")
    return {name: _check_option(name, value) for name, value in options.items()}


def _check_option(name: str, value) -> float:
    """The option as a float, if native accepts it: a finite number in its range, as float32 (or
    int32) holds it. A value that rounds into the range is accepted, one that rounds out is not."""
    allowed, in_range = _OPTION_RANGES[name]
    try:
        number = float(value) if isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int beyond float64
        number = math.inf
    seen = number
    if name not in _INT_OPTIONS and math.isfinite(number):
        with np.errstate(over="ignore", under="ignore"):  # out of float32: Inf (rejected) or 0
            seen = float(np.float32(number))
    if not (math.isfinite(seen) and in_range(seen)):
        rounded_out = math.isfinite(number) and in_range(number)  # only float32 rounding rejects it
        as_native = f" (as float32: {seen!r})" if rounded_out else ""
        raise InputError(f"options: {name} must be {allowed}, got {value!r}{as_native}")
    return number


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


def _check_n_keep(n_keep, method: str, n_tokens: int, grid_h: int, grid_w: int, whole_grid: bool) -> int:
    try:
        n_keep = operator.index(n_keep)
    except TypeError:
        raise InputError(f"n_keep: expected an integer number of image tokens, got {n_keep!r}") from None
    if not 1 <= n_keep <= n_tokens:
        raise InputError(f"n_keep: expected 1..{n_tokens} image tokens, got {n_keep}")
    if method == "full" and n_keep != n_tokens:
        raise InputError(f"n_keep: method 'full' keeps all {n_tokens} image tokens, got {n_keep}")
    if method == "pool" and not whole_grid:
        raise InputError("patch_idx: method 'pool' needs the whole patch grid, not a subset")
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
