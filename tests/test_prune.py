"""dcp_desktop.prune: the native core equals its NumPy twin, each method does what it says,
and bad input gets an InputError that names the argument (or, calling _native directly,
a ValueError / TypeError, never a crash)."""

import concurrent.futures
import dataclasses
import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcp_desktop import _native, prune_reference
from dcp_desktop.errors import InputError
from dcp_desktop.prune import DEFAULT_OPTIONS, METHODS, OPTIONS, TEXT_AWARE, Selection, check_n_keep, kappa, select

SIMPLE_METHODS = ("full", "pool", "fastervlm", "random")  # the others have test files of their own

GRIDS = [(24, 24), (6, 4), (1, 7), (5, 5), (7, 3), (4, 9)]
FEATURE_KINDS = ["normal", "duplicate_rows", "constant", "zeros", "large", "tiny"]
ATTN_KINDS = ["softmax", "all_equal", "few_levels", "signed_zeros"]
FEW_EXAMPLES = settings(max_examples=60, deadline=None)


# ---- input builders ------------------------------------------------------------------------


def make_features(kind: str, rng: np.random.Generator, n_tokens: int, n_dim: int) -> np.ndarray:
    if kind == "duplicate_rows":
        prototypes = rng.standard_normal((3, n_dim))  # (3, d)
        features = prototypes[rng.integers(0, 3, n_tokens)]  # (n, d)
    elif kind == "constant":
        features = np.full((n_tokens, n_dim), rng.standard_normal())
    elif kind == "zeros":
        features = np.zeros((n_tokens, n_dim))
    elif kind == "large":
        features = rng.standard_normal((n_tokens, n_dim)) * 1e4
    elif kind == "tiny":
        features = rng.standard_normal((n_tokens, n_dim)) * 1e-30
    else:
        features = rng.standard_normal((n_tokens, n_dim))
    return features.astype(np.float32)


def make_cls_attn(kind: str, rng: np.random.Generator, n_tokens: int) -> np.ndarray:
    if kind == "all_equal":
        attn = np.full(n_tokens, 1.0 / n_tokens)
    elif kind == "few_levels":
        attn = rng.integers(0, 3, n_tokens) / 3.0  # many ties
    elif kind == "signed_zeros":
        attn = np.where(rng.random(n_tokens) < 0.5, -0.0, 0.0)  # ties between +0 and -0
        attn[rng.integers(0, n_tokens)] = 1.0
    else:
        logits = rng.standard_normal(n_tokens)
        attn = np.exp(logits) / np.exp(logits).sum()
    return attn.astype(np.float32)


def pool_fits(n_keep: int, grid_h: int, grid_w: int) -> bool:
    rows, cols = prune_reference.pool_cell_grid(n_keep)
    return rows <= grid_h and cols <= grid_w


def allowed_n_keeps(method: str, grid_h: int, grid_w: int) -> list[int]:
    n_tokens = grid_h * grid_w
    if method == "full":
        return [n_tokens]
    if method == "pool":
        return [k for k in range(1, n_tokens + 1) if pool_fits(k, grid_h, grid_w)]
    return list(range(1, n_tokens + 1))


@st.composite
def image_tokens(draw):
    grid = draw(st.sampled_from(GRIDS) | st.tuples(st.integers(1, 8), st.integers(1, 8)))
    n_tokens, n_dim = grid[0] * grid[1], draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    features = make_features(draw(st.sampled_from(FEATURE_KINDS)), rng, n_tokens, n_dim)
    cls_attn = make_cls_attn(draw(st.sampled_from(ATTN_KINDS)), rng, n_tokens)
    return features, cls_attn, grid


@st.composite
def n_keep_for(draw, method: str, grid: tuple[int, int]):
    allowed = allowed_n_keeps(method, *grid)
    edges = [k for k in (1, allowed[-1] - 1, allowed[-1]) if k in allowed]  # K = 1, N-1, N
    return draw(st.sampled_from(edges) | st.sampled_from(allowed))


def random_image(grid=(24, 24), n_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    n_tokens = grid[0] * grid[1]
    return make_features("normal", rng, n_tokens, n_dim), make_cls_attn("softmax", rng, n_tokens)


def assert_same_selection(a: Selection, b: Selection) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.masses, b.masses)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    assert a.kappa == pytest.approx(b.kappa, rel=1e-4, abs=1e-4)
    assert a.used_tatcs == b.used_tatcs
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert a.assignment.dtype == np.int32


def assert_selection_assignment(kept: Selection, features: np.ndarray, masses=None, patch_idx=None) -> None:
    """A selection method's assignment: the K kept rows each on its own token, every other row on the
    kept row its feature is most cosine-similar to (up to rounding), and each mass the sum over its rows."""
    n_tokens = len(features)
    patches = np.arange(n_tokens) if patch_idx is None else np.asarray(patch_idx)
    masses = np.ones(n_tokens) if masses is None else np.asarray(masses, np.float64)
    assert kept.assignment.shape == (n_tokens,) and (kept.assignment >= 0).all()
    rows = np.flatnonzero(np.isin(patches, kept.indices))  # (K,)
    np.testing.assert_array_equal(patches[rows], kept.indices)
    np.testing.assert_array_equal(kept.assignment[rows], np.arange(len(kept.indices)))
    x = features.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)  # (N, D)
    similarity = unit @ unit[rows].T  # (N, K)
    chosen = similarity[np.arange(n_tokens), kept.assignment]
    assert (chosen >= similarity.max(axis=1) - 1e-5).all(), "a dropped row joined a kept row that is not its nearest"
    np.testing.assert_allclose(kept.masses, np.bincount(kept.assignment, masses, minlength=len(rows)), rtol=1e-6)


def pool_cells_by_patch(grid, n_keep: int) -> np.ndarray:
    """(grid_h·grid_w,) the first cell (raster order) containing each patch, from prune.h's rule."""
    grid_h, grid_w = grid
    rows, cols = prune_reference.pool_cell_grid(n_keep)
    expected = np.full(grid_h * grid_w, -1)
    for patch in range(grid_h * grid_w):
        r, c = divmod(patch, grid_w)
        for cell in range(n_keep):
            i, j = divmod(cell, cols)
            if (i * grid_h) // rows <= r < -(-(i + 1) * grid_h // rows) \
                    and (j * grid_w) // cols <= c < -(-(j + 1) * grid_w // cols):
                expected[patch] = cell
                break
    return expected


# ---- native == reference -------------------------------------------------------------------


@pytest.mark.parametrize("method", SIMPLE_METHODS)
@FEW_EXAMPLES
@given(tokens=image_tokens(), data=st.data(), seed=st.integers(0, 2**64 - 1))
def test_native_matches_reference(method, tokens, data, seed):
    features, cls_attn, grid = tokens
    n_keep = data.draw(n_keep_for(method, grid))
    native = select(features, cls_attn, n_keep=n_keep, method=method, grid=grid, seed=seed)
    reference = select(features, cls_attn, n_keep=n_keep, method=method, grid=grid, seed=seed,
                       impl="reference")
    assert_same_selection(native, reference)
    assert native.indices.dtype == np.int32 and native.features.dtype == np.float32
    assert native.features.shape == (n_keep, features.shape[1])
    assert np.all(np.diff(native.indices) > 0), "indices must be strictly ascending"
    assert native.kappa >= 0
    if method == "pool":
        np.testing.assert_array_equal(native.assignment, pool_cells_by_patch(grid, n_keep))
    else:
        assert_selection_assignment(native, features)


def test_pool_assignment_tiles_a_divisible_grid():
    features, _ = random_image()
    kept = select(features, n_keep=16, method="pool")
    np.testing.assert_array_equal(kept.assignment.reshape(4, 6, 4, 6).transpose(0, 2, 1, 3).reshape(16, 36),
                                  np.repeat(np.arange(16), 36).reshape(16, 36))
    np.testing.assert_array_equal(np.bincount(kept.assignment, minlength=16), kept.masses)


def test_method_lists_agree():
    assert METHODS == tuple(row["name"] for row in _native.methods()) == tuple(prune_reference.SELECTORS)


# ---- what each method does -----------------------------------------------------------------


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_full_is_identity(impl):
    features, cls_attn = random_image()
    kept = select(features, cls_attn, n_keep=576, method="full", impl=impl)
    np.testing.assert_array_equal(kept.indices, np.arange(576))
    np.testing.assert_array_equal(kept.features, features)
    np.testing.assert_array_equal(kept.masses, np.ones(576))
    assert kept.kappa == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_kappa_grows_as_fewer_tokens_are_kept(impl):
    features, cls_attn = random_image(n_dim=32)
    kappas = [select(features, cls_attn, n_keep=k, method="random", seed=3, impl=impl).kappa
              for k in (288, 64, 16, 4, 1)]
    assert kappas == sorted(kappas) and kappas[-1] - kappas[0] > 0.3


def test_kappa_function_matches_the_selection():
    features, cls_attn = random_image(n_dim=16)
    kept = select(features, cls_attn, n_keep=16, method="pool")
    assert kappa(features, kept.features) == pytest.approx(kept.kappa, rel=1e-6)
    assert prune_reference.kappa(features, None, kept.features) == pytest.approx(kept.kappa, rel=1e-5)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_kappa_is_the_uncovered_share_of_the_input(impl):
    """κ = 1 − mass-weighted mean best cosine: two orthogonal patches, one kept; a scaled copy counts as
    covered; the kept set's own masses do not enter."""
    full = np.array([[1, 0, 0, 0], [0, 2, 0, 0]], np.float32)
    of = kappa if impl == "native" else (lambda a, b, m=None: prune_reference.kappa(a, m, b))
    assert of(full, full[:1]) == pytest.approx(0.5)
    assert of(full, full[:1], np.array([3, 1], np.float32)) == pytest.approx(0.25)
    assert of(full, 5 * full[1:]) == pytest.approx(0.5) and of(full, full) == pytest.approx(0.0, abs=1e-7)
    assert of(full, np.array([[1, 1, 0, 0]], np.float32)) == pytest.approx(1 - 0.5 ** 0.5, rel=1e-6)


@pytest.mark.parametrize("n_keep, cells", [(1, (1, 1)), (7, (1, 7)), (8, (2, 4)), (16, (4, 4)),
                                           (32, (4, 8)), (192, (12, 16)), (576, (24, 24))])
def test_pool_cell_grid_is_the_squarest_factorisation(n_keep, cells):
    assert prune_reference.pool_cell_grid(n_keep) == cells


@FEW_EXAMPLES
@given(tokens=image_tokens(), data=st.data())
def test_pool_equals_torch_adaptive_avg_pool2d(tokens, data):
    features, _, (grid_h, grid_w) = tokens
    n_keep = data.draw(n_keep_for("pool", (grid_h, grid_w)))
    rows, cols = prune_reference.pool_cell_grid(n_keep)
    patch_grid = torch.from_numpy(features).T.reshape(1, -1, grid_h, grid_w)  # (1, d, h, w)
    pooled = torch.nn.functional.adaptive_avg_pool2d(patch_grid.double(), (rows, cols))  # (1, d, rows, cols)
    expected = pooled.reshape(-1, rows * cols).T.numpy()  # (K, d)
    kept = select(features, n_keep=n_keep, method="pool", grid=(grid_h, grid_w))
    np.testing.assert_allclose(kept.features, expected, rtol=1e-5, atol=1e-5)
    if grid_h % rows == 0 and grid_w % cols == 0:  # cells tile the grid, no overlap
        assert kept.masses.sum() == grid_h * grid_w


def test_pool_16_of_24x24_keeps_cell_centres_with_mass_36():
    features, _ = random_image()
    kept = select(features, n_keep=16, method="pool")
    centres = [2, 8, 14, 20]  # (start + end - 1) // 2 for the 6-patch cells
    np.testing.assert_array_equal(kept.indices, [r * 24 + c for r in centres for c in centres])
    np.testing.assert_array_equal(kept.masses, np.full(16, 36.0))
    assert kept.masses.sum() == 576


def test_pool_overlapping_cells_count_shared_patches_in_each():
    features, _ = random_image(grid=(5, 5))
    kept = select(features, n_keep=4, method="pool", grid=(5, 5))  # cells span rows [0,3) and [2,5)
    np.testing.assert_array_equal(kept.masses, np.full(4, 9.0))


@FEW_EXAMPLES
@given(tokens=image_tokens(), data=st.data())
def test_fastervlm_keeps_the_highest_attention(tokens, data):
    features, cls_attn, grid = tokens
    n_keep = data.draw(n_keep_for("fastervlm", grid))
    kept = select(features, cls_attn, n_keep=n_keep, method="fastervlm", grid=grid)
    dropped = np.setdiff1d(np.arange(len(cls_attn)), kept.indices)
    if len(dropped):
        assert cls_attn[kept.indices].min() >= cls_attn[dropped].max()
    np.testing.assert_array_equal(kept.features, features[kept.indices])
    assert_selection_assignment(kept, features)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_fastervlm_breaks_ties_towards_the_lower_index(impl):
    features, _ = random_image()
    cls_attn = np.full(576, 0.5, dtype=np.float32)
    cls_attn[[100, 300]] = 0.9
    kept = select(features, cls_attn, n_keep=5, method="fastervlm", impl=impl)
    np.testing.assert_array_equal(kept.indices, [0, 1, 2, 100, 300])


def test_random_is_deterministic_per_seed_and_differs_across_seeds():
    features, _ = random_image()
    picks = [tuple(select(features, n_keep=16, method="random", seed=seed).indices) for seed in range(10)]
    again = [tuple(select(features, n_keep=16, method="random", seed=seed).indices) for seed in range(10)]
    assert picks == again
    assert len(set(picks)) == 10
    assert all(len(set(p)) == 16 and 0 <= min(p) and max(p) < 576 for p in picks)


def test_splitmix64_matches_published_test_vectors():
    draws = prune_reference.simple.splitmix64(1234567)
    assert [next(draws) for _ in range(2)] == [6457827717110365317, 3203168211198807973]


def test_random_accepts_the_largest_seed():
    features, _ = random_image()
    native = select(features, n_keep=16, method="random", seed=2**64 - 1)
    reference = select(features, n_keep=16, method="random", seed=2**64 - 1, impl="reference")
    assert_same_selection(native, reference)


# ---- the Selection and the conversions select() makes ----------------------------------------


def test_selection_is_frozen_and_read_only():
    features, _ = random_image()
    kept = select(features, n_keep=16, method="pool")
    with pytest.raises(dataclasses.FrozenInstanceError):
        kept.kappa = 1.0
    with pytest.raises(ValueError):
        kept.features[0, 0] = 1.0


@pytest.mark.parametrize("method", ["pool", "fastervlm", "random"])
@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float64),
    lambda x: np.asfortranarray(x),
    lambda x: np.repeat(x, 2, axis=-1)[..., ::2],  # non-contiguous view, same values
    lambda x: x.tolist(),
], ids=["float64", "fortran", "strided", "list"])
def test_other_dtypes_and_layouts_are_converted(method, convert):
    features, cls_attn = random_image()
    expected = select(features, cls_attn, n_keep=16, method=method)
    kept = select(convert(features), convert(cls_attn), n_keep=16, method=method)
    assert_same_selection(kept, expected)


def test_float16_input_is_converted():
    features, cls_attn = random_image()
    half_features, half_attn = features.astype(np.float16), cls_attn.astype(np.float16)
    expected = select(half_features.astype(np.float32), half_attn.astype(np.float32), n_keep=16, method="fastervlm")
    kept = select(half_features, half_attn, n_keep=16, method="fastervlm")
    assert_same_selection(kept, expected)
    assert kept.features.dtype == np.float32


# ---- bad input through select() -------------------------------------------------------------

FEATURES, CLS_ATTN = random_image(n_dim=64)


def features_with(index, value, dtype=np.float32):
    bad = FEATURES.astype(dtype)
    bad.flat[index] = value
    return bad


BAD_CALLS = {
    "nan": (dict(features=features_with([3, 70, 900], np.nan), method="pool"),
            "features: contains NaN or Inf (3 values)"),
    "inf": (dict(features=features_with(5, np.inf), method="pool"), "features: contains NaN or Inf (1 values)"),
    "float32 overflow": (dict(features=features_with(5, 1e39, np.float64), method="pool"),
                         "features: contains NaN or Inf"),
    "nan cls_attn": (dict(cls_attn=np.where(np.arange(576) == 7, np.nan, CLS_ATTN), method="fastervlm"),
                     "cls_attn: contains NaN or Inf (1 values)"),
    "short features": (dict(features=FEATURES[:575]),
                       "features: expected a (576, D) array for a 24×24 grid, got shape (575, 64)"),
    "3-d features": (dict(features=FEATURES.reshape(24, 24, 64)), "features: expected a (576, D) array"),
    "no columns": (dict(features=np.zeros((576, 0), np.float32)), "features: expected a (576, D) array"),
    "wrong grid": (dict(grid=(20, 20)), "features: expected a (400, D) array for a 20×20 grid"),
    "complex": (dict(features=FEATURES.astype(np.complex64)), "features: expected real numbers"),
    "k=0": (dict(n_keep=0), "n_keep: expected 1..576 image tokens, got 0"),
    "k>n": (dict(n_keep=577), "n_keep: expected 1..576 image tokens, got 577"),
    "k not int": (dict(n_keep=16.5), "n_keep: expected an integer"),
    "full k<n": (dict(method="full", n_keep=16), "n_keep: method 'full' keeps all 576 image tokens, got 16"),
    "pool k prime": (dict(method="pool", n_keep=29), "n_keep: method 'pool' lays 29 tokens out as 1×29"),
    "unknown method": (dict(method="foo"), "method: unknown 'foo'; choose one of full, pool, fastervlm, random"),
    "missing cls_attn": (dict(cls_attn=None, method="fastervlm"),
                         "cls_attn: method 'fastervlm' needs the [CLS] attention row"),
    "short cls_attn": (dict(cls_attn=CLS_ATTN[:-1]), "cls_attn: expected shape (576,)"),
    "bad grid": (dict(grid=(0, 24)), "grid: expected (rows, cols) of positive integers"),
    "negative seed": (dict(seed=-1, method="random"), "seed: expected an integer in 0..2**64-1, got -1"),
    "huge seed": (dict(seed=2**64, method="random"), "seed: expected an integer in 0..2**64-1"),
    "unknown impl": (dict(impl="gpu"), "impl: expected 'native' or 'reference', got 'gpu'"),
    "unknown option": (dict(options={"alpha": 1.0}), "options: unknown alpha; known: acgr_min_similarity, acgr_n_neighbors"),
    "negative tau": (dict(options={"tau": -0.5}), "options: tau must be a finite number >= 0, got -0.5"),
    "theta > 1": (dict(options={"cdpruner_theta": 1.5}), "options: cdpruner_theta must be a number in [0, 1], got 1.5"),
    "sigma 0 in float32": (dict(options={"acgr_spatial_sigma": 1e-50}),
                           "options: acgr_spatial_sigma must be a finite number > 0, got 1e-50 (as float32: 0.0)"),
    "fractional neighbours": (dict(options={"acgr_n_neighbors": 2.5}),
                              "options: acgr_n_neighbors must be a whole number in 1..2147483647, got 2.5"),
    "nan option": (dict(options={"tatcs_text_weight": float("nan")}),
                   "options: tatcs_text_weight must be a finite number >= 0, got nan"),
}


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("case", BAD_CALLS.keys())
def test_bad_input_raises_input_error_naming_the_argument(case, impl):
    overrides, message = BAD_CALLS[case]
    call = dict(features=FEATURES, cls_attn=CLS_ATTN, n_keep=16, method="fastervlm", impl=impl) | overrides
    with pytest.raises(InputError) as error:
        select(call.pop("features"), call.pop("cls_attn"), **call)
    assert message in str(error.value)


FLOAT_OPTION_EDGES = [-1.0, -1e-46, -0.0, 0.0, 1e-46, 1e-45, 0.5, 1.0, 1.00000001, 1.001, 3.4e38, 1e39]
INT_OPTION_EDGES = [-1, 0, 1, 2, 64, 65, 2**31 - 1]  # native truncates fractions, select rejects them


def native_core_accepts(options: dict) -> bool:
    """Whether options_are_valid in native/prune.cpp accepts `options` (select() bypassed)."""
    try:
        _native.prune(FEATURES, CLS_ATTN, None, None, None, None, 24, 24, 16, "fastervlm", 0, options)
    except ValueError as error:
        assert str(error).startswith("options: ")
        return False
    return True


@pytest.mark.parametrize("name, value", [
    (name, value) for name in DEFAULT_OPTIONS
    for value in (INT_OPTION_EDGES if OPTIONS[name].integer else FLOAT_OPTION_EDGES)])
def test_option_ranges_match_the_native_core_for_both_impls(name, value):
    """select() checks the ranges of prune.h's dcp_options once, for both impls, on the float32
    value native sees (1.00000001 rounds to 1, 1e-46 to 0, 1e39 to Inf), so it accepts an option
    exactly when the native core does; a rejection names the option and its range."""
    accepted = {}
    for impl in ("native", "reference"):
        try:
            select(FEATURES, CLS_ATTN, n_keep=16, method="fastervlm", options={name: value}, impl=impl)
            accepted[impl] = True
        except InputError as error:
            assert str(error).startswith(f"options: {name} must be a ")
            accepted[impl] = False
    assert accepted["native"] == accepted["reference"] == native_core_accepts({name: value})


def test_option_table_is_whole_and_its_defaults_are_in_range():
    assert set(OPTIONS) == set(DEFAULT_OPTIONS)
    for option in OPTIONS.values():
        assert option.methods and set(option.methods) <= set(METHODS) and option.doc
        assert option.allows(option.default), option.name
    assert TEXT_AWARE == {"cdpruner", "tatcs", "dcp"}


def test_native_defaults_are_the_table_defaults():
    """An empty options dict and the complete DEFAULT_OPTIONS pick the same tokens: the native core's
    dcp_options_default() and the table Python reads are one source."""
    features, cls_attn = random_image(n_dim=32)
    args = (features, cls_attn, None, None, None, features[:3], 24, 24, 16, "dcp", 0)
    for default, full in zip(_native.prune(*args, {}), _native.prune(*args, DEFAULT_OPTIONS)):
        np.testing.assert_array_equal(default, full)


def test_native_names_an_unknown_option():
    with pytest.raises(ValueError, match="^options: alpha: no option has this name"):
        _native.prune(FEATURES, CLS_ATTN, None, None, None, None, 24, 24, 16, "fastervlm", 0, {"alpha": 1.0})


def test_check_n_keep_names_the_argument_it_is_given():
    """The CLI checks --tokens with the same function select() uses, under its own flag's name."""
    assert check_n_keep(16, "dcp", 576, (24, 24), whole_grid=True, argument="--tokens") == 16
    with pytest.raises(InputError, match=r"^--tokens: expected 1\.\.576 image tokens, got 577$"):
        check_n_keep(577, "dcp", 576, (24, 24), whole_grid=True, argument="--tokens")
    with pytest.raises(InputError, match=r"^--tokens: method 'pool' lays 29 .* try --tokens=28$"):
        check_n_keep(29, "pool", 576, (24, 24), whole_grid=True, argument="--tokens")


def test_unfitting_pool_budget_suggests_the_nearest_that_fits():
    with pytest.raises(InputError, match=r"try n_keep=28$"):
        select(FEATURES, n_keep=29, method="pool")


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


# ---- the native module called directly ------------------------------------------------------


def native_prune(features=FEATURES, cls_attn=CLS_ATTN, grid_h=24, grid_w=24, n_keep=16, method="fastervlm",
                 seed=0):
    return _native.prune(features, cls_attn, None, None, None, None, grid_h, grid_w, n_keep, method, seed, {})


@pytest.mark.parametrize("bad_features", [
    FEATURES.astype(np.int32), FEATURES.astype(np.float64), FEATURES.reshape(24, 24, 64),
    FEATURES[:, ::2], np.asfortranarray(FEATURES), FEATURES.tolist(), None,
], ids=["int32", "float64", "3-d", "strided", "fortran", "list", "none"])
def test_native_rejects_arrays_breaking_the_contract_with_type_error(bad_features):
    with pytest.raises(TypeError):
        native_prune(features=bad_features)


@pytest.mark.parametrize("overrides, argument", [
    (dict(grid_h=20), "features"),
    (dict(features=FEATURES[:, :0]), "features"),
    (dict(features=FEATURES[:0], cls_attn=CLS_ATTN[:0], grid_h=0, grid_w=0), "features"),
    (dict(grid_h=-24, grid_w=-24), "features"),
    (dict(features=features_with(3, np.nan)), "features"),
    (dict(cls_attn=np.full(576, np.inf, np.float32)), "cls_attn"),
    (dict(cls_attn=None), "cls_attn"),
    (dict(cls_attn=CLS_ATTN[:10]), "cls_attn"),
    (dict(n_keep=0), "n_keep"),
    (dict(n_keep=-5), "n_keep"),
    (dict(n_keep=577), "n_keep"),
    (dict(method="full"), "n_keep"),
    (dict(method="pool", n_keep=29), "n_keep"),
    (dict(method="foo"), "method"),
])
def test_native_raises_value_error_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=f"^{argument}: "):
        native_prune(**overrides)


def test_native_outputs_own_their_memory():
    features = FEATURES.copy()
    kept_idx, kept_features, masses, _, _, _ = native_prune(features=features)
    expected = features[kept_idx].copy()
    del features
    gc.collect()
    np.testing.assert_array_equal(kept_features, expected)
    assert kept_idx.shape == (16,) and masses.shape == (16,) and kept_features.shape == (16, 64)
    assert kept_features.flags.c_contiguous and kept_features.flags.writeable


def test_native_is_safe_from_many_threads():
    features, cls_attn = random_image(n_dim=256)
    expected = native_prune(features=features, cls_attn=cls_attn, method="random", seed=7)[0]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: native_prune(features=features, cls_attn=cls_attn, method="random",
                                                       seed=7)[0], range(32)))
    for result in results:
        np.testing.assert_array_equal(result, expected)
