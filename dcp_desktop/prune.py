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

# ---- the method and option facts, from the native core's tables (native/methods.cpp) ------------

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Option:
    """A row of the native option table: a method knob, its range and the methods that read it."""

    name: str
    integer: bool  # stored as int32 by the native core (else float32)
    default: float
    min: float
    min_exclusive: bool
    max: float  # float32's largest finite value means no upper bound (see `bounded`)
    methods: tuple[str, ...]
    doc: str

    @property
    def bounded(self) -> bool:
        """False when the maximum is float32's largest value: any finite float32 is allowed (a larger
        number becomes Inf as float32, which the finiteness test refuses)."""
        return self.max != _FLOAT32_MAX

    def allows(self, value: float) -> bool:
        """Whether the native core accepts `value`, already rounded as it stores it (float32), by the
        core's range test. A fraction for an integer option is refused: the core would truncate it."""
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above_min = value > self.min if self.min_exclusive else value >= self.min
        return above_min and (not self.bounded or value <= self.max)

    @property
    def allowed(self) -> str:
        """The range in words, as errors state it."""
        if self.integer:
            return f"a whole number in {int(self.min)}..{int(self.max)}"
        if not self.bounded:
            return f"a finite number {'>' if self.min_exclusive else '>='} {self.min:g}"
        return f"a number in {'(' if self.min_exclusive else '['}{self.min:g}, {self.max:g}]"


_METHOD_ROWS = _native.methods()
METHODS = tuple(row["name"] for row in _METHOD_ROWS)
TEXT_AWARE = frozenset(row["name"] for row in _METHOD_ROWS if row["text_aware"])  # use `text` when given
_NEEDS_CLS_ATTN = frozenset(row["name"] for row in _METHOD_ROWS if row["needs_cls_attn"])
OPTIONS = {row["name"]: Option(**row) for row in _native.options()}
DEFAULT_OPTIONS = {name: option.default for name, option in OPTIONS.items()}
_IMPLS = {"native": _native.prune, "reference": prune_reference.prune}


@dataclass(frozen=True, eq=False)
class Selection:
    """The kept tokens of one image. Arrays are read-only."""

    indices: np.ndarray   # (K,) int32: the patch each token sits on, raster order, ascending
    features: np.ndarray  # (K, D) float32
    masses: np.ndarray    # (K,) float32: how many original patches each token stands for
    kappa: float          # κ: the share of the input these leave uncovered (0 = none)
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
    options: overrides of DEFAULT_OPTIONS (OPTIONS says what each does). seed: drives "random" only.
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
    n_keep = check_n_keep(n_keep, method, n_tokens, (grid_h, grid_w), whole_grid=patch_idx is None)
    options = {**DEFAULT_OPTIONS, **_check_options(options)}  # both impls get every option
    seed = _check_seed(seed)
    prune = _check_impl(impl)
    indices, kept, kept_masses, kappa, used_tatcs, assignment = prune(
        features, cls_attn, keys, masses, patch_idx, text, grid_h, grid_w, n_keep, method, seed, options)
    for array in (indices, kept, kept_masses, assignment):
        array.setflags(write=False)
    return Selection(indices=indices, features=kept, masses=kept_masses, kappa=float(kappa),
                     used_tatcs=bool(used_tatcs), assignment=assignment)


def reads_question(method: str, options: dict | None = None) -> bool:
    """Whether `method` with these options looks at the question: cdpruner always; tatcs and dcp only
    with tatcs_use_text (off by default: docs/dcp-prune.md); the others never."""
    if method not in TEXT_AWARE:
        return False
    return method == "cdpruner" or bool({**DEFAULT_OPTIONS, **(options or {})}["tatcs_use_text"])


def kappa(full, kept, full_masses=None) -> float:
    """κ: how much of a full token set (its rows weighted by their masses) a kept set leaves uncovered,
    1 − the mean best cosine to a kept row; see dcp_kappa in native/prune.h."""
    full = _check_rows("full", full, None, None)
    kept = _check_rows("kept", kept, None, full.shape[1])
    full_masses = None if full_masses is None else _check_masses(full_masses, len(full))
    return float(_native.kappa(full, full_masses, kept))


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
    option = OPTIONS[name]
    try:
        number = float(value) if isinstance(value, (int, float)) else math.nan
    except OverflowError:  # an int beyond float64
        number = math.inf
    seen = number
    if not option.integer and math.isfinite(number):
        with np.errstate(over="ignore", under="ignore"):  # out of float32: Inf (rejected) or 0
            seen = float(np.float32(number))
    if not option.allows(seen):
        rounded_out = option.allows(number)  # only float32 rounding rejects it
        as_native = f" (as float32: {seen!r})" if rounded_out else ""
        raise InputError(f"options: {name} must be {option.allowed}, got {value!r}{as_native}")
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


def check_n_keep(n_keep, method: str, n_tokens: int, grid: tuple[int, int], *, whole_grid: bool,
                 argument: str = "n_keep") -> int:
    """`n_keep` as an int, if `method` can keep that many of `n_tokens` tokens on a `grid` (rows, cols);
    InputError naming `argument` (the CLI passes "--tokens") otherwise. whole_grid: the tokens are
    the whole grid, not a subset (pool needs it). The one check of K in Python; native checks again."""
    try:
        n_keep = operator.index(n_keep)
    except TypeError:
        raise InputError(f"{argument}: expected an integer number of image tokens, got {n_keep!r}") from None
    if not 1 <= n_keep <= n_tokens:
        raise InputError(f"{argument}: expected 1..{n_tokens} image tokens, got {n_keep}")
    if method == "full" and n_keep != n_tokens:
        raise InputError(f"{argument}: method 'full' keeps all {n_tokens} image tokens, got {n_keep}")
    if method == "pool" and not whole_grid:
        raise InputError("patch_idx: method 'pool' needs the whole patch grid, not a subset")
    if method == "pool" and not _pool_fits(n_keep, *grid):
        rows, cols = prune_reference.pool_cell_grid(n_keep)
        nearest = min((k for k in range(1, n_tokens + 1) if _pool_fits(k, *grid)),
                      key=lambda k: (abs(k - n_keep), k))
        raise InputError(f"{argument}: method 'pool' lays {n_keep} tokens out as {rows}×{cols}, which does "
                         f"not fit the {grid[0]}×{grid[1]} patch grid; try {argument}={nearest}")
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
