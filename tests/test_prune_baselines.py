"""VisionZip, DivPrune and CDPruner (native/baselines.cpp): the native core picks exactly the rows
its NumPy twin picks, on random and adversarial inputs, and each method does what prune.h says."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcp_desktop.errors import InputError
from dcp_desktop.prune import select
from test_prune import assert_selection_assignment

BASELINES = ("visionzip", "divprune", "cdpruner")
FEW_EXAMPLES = settings(max_examples=60, deadline=None)
ROW_KINDS = ["normal", "duplicate_rows", "constant", "zeros", "some_zero_rows", "large", "tiny"]
ATTN_KINDS = ["softmax", "all_equal", "few_levels"]


# ---- input builders ------------------------------------------------------------------------


def make_rows(kind: str, rng: np.random.Generator, n_rows: int, n_dim: int) -> np.ndarray:
    rows = rng.standard_normal((n_rows, n_dim))  # (n, d)
    if kind == "duplicate_rows":
        rows = rows[rng.integers(0, 3, n_rows) % n_rows]  # at most 3 distinct rows
    elif kind == "constant":
        rows = np.full((n_rows, n_dim), rng.standard_normal())
    elif kind == "zeros":
        rows = np.zeros((n_rows, n_dim))
    elif kind == "some_zero_rows":
        rows[rng.random(n_rows) < 0.3] = 0.0
    elif kind == "large":
        rows *= 1e4
    elif kind == "tiny":
        rows *= 1e-30
    return rows.astype(np.float32)


def make_cls_attn(kind: str, rng: np.random.Generator, n_tokens: int) -> np.ndarray:
    if kind == "all_equal":
        return np.full(n_tokens, 1.0 / n_tokens, np.float32)
    if kind == "few_levels":
        return (rng.integers(0, 3, n_tokens) / 3.0).astype(np.float32)  # many ties
    logits = rng.standard_normal(n_tokens)
    return (np.exp(logits) / np.exp(logits).sum()).astype(np.float32)


def make_text(kind: str, rng: np.random.Generator, features: np.ndarray) -> np.ndarray | None:
    n_dim = features.shape[1]
    if kind == "none":
        return None
    if kind == "empty":
        return np.zeros((0, n_dim), np.float32)
    if kind == "token_copies":  # as relevant as can be to some tokens, ties included
        return features[rng.integers(0, len(features), 2)]
    return make_rows(kind, rng, int(rng.integers(1, 4)), n_dim)


@st.composite
def baseline_inputs(draw):
    """select() keyword arguments for one image: tokens (maybe a subset of the grid), keys,
    masses, text and options, each drawn plain or adversarial."""
    grid = draw(st.sampled_from([(24, 24), (5, 5)]) | st.tuples(st.integers(1, 8), st.integers(1, 8)))
    n_grid = grid[0] * grid[1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_tokens = draw(st.sampled_from([n_grid, int(rng.integers(1, n_grid + 1))]))
    features = make_rows(draw(st.sampled_from(ROW_KINDS)), rng, n_tokens, draw(st.integers(1, 12)))
    keys, masses, patch_idx = None, None, None
    if draw(st.booleans()):
        keys = make_rows(draw(st.sampled_from(ROW_KINDS)), rng, n_tokens, draw(st.integers(1, 6)))
    if draw(st.booleans()):
        masses = (rng.uniform(0.1, 4.0, n_tokens) if draw(st.booleans()) else rng.integers(1, 5, n_tokens))
        masses = masses.astype(np.float32)
    if n_tokens < n_grid:
        patch_idx = np.sort(rng.choice(n_grid, n_tokens, replace=False)).astype(np.int32)
    edges = [k for k in (1, n_tokens - 1, n_tokens) if k >= 1]  # K = 1, N-1, N
    return dict(
        features=features, cls_attn=make_cls_attn(draw(st.sampled_from(ATTN_KINDS)), rng, n_tokens),
        n_keep=draw(st.sampled_from(edges) | st.integers(1, n_tokens)), grid=grid, keys=keys,
        masses=masses, patch_idx=patch_idx,
        text=make_text(draw(st.sampled_from(["none", "empty", "token_copies", "normal", "zeros"])), rng, features),
        options=dict(visionzip_dominant_ratio=draw(st.sampled_from([0.0, 0.3, 0.5, 54 / 64, 1.0]) | st.floats(0, 1)),
                     cdpruner_theta=draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0, 1))))


def select_both(method: str, **call):
    """The native and the reference selection for the same call."""
    return select(method=method, **call), select(method=method, impl="reference", **call)


def assert_same_selection(native, reference) -> None:
    np.testing.assert_array_equal(native.indices, reference.indices)
    np.testing.assert_array_equal(native.masses, reference.masses)
    np.testing.assert_allclose(native.features, reference.features, rtol=1e-5, atol=1e-5)
    assert native.kappa == pytest.approx(reference.kappa, rel=1e-4, abs=1e-4)
    assert native.used_tatcs == reference.used_tatcs is False
    np.testing.assert_array_equal(native.assignment, reference.assignment)
    assert native.assignment.dtype == np.int32


def clustered_rows(rng: np.random.Generator, n_clusters: int, per_cluster: int, n_dim: int):
    """Tight clusters around random directions, shuffled: (rows (n, d), cluster of each row (n,))."""
    centres = rng.standard_normal((n_clusters, n_dim))  # (c, d)
    label = rng.permutation(np.repeat(np.arange(n_clusters), per_cluster))  # (n,)
    rows = centres[label] + 0.01 * rng.standard_normal((len(label), n_dim))
    return rows.astype(np.float32), label


# ---- native == reference -------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINES)
@FEW_EXAMPLES
@given(call=baseline_inputs())
def test_native_matches_reference(method, call):
    native, reference = select_both(method, **call)
    assert_same_selection(native, reference)
    assert native.features.shape == (call["n_keep"], call["features"].shape[1])
    assert np.all(np.diff(native.indices) > 0), "indices must be strictly ascending"
    patches = np.arange(len(call["features"])) if call["patch_idx"] is None else call["patch_idx"]
    assert np.isin(native.indices, patches).all()
    assignment = native.assignment
    assert assignment.shape == (len(patches),) and assignment.min() >= -1 and assignment.max() < call["n_keep"]
    if method == "visionzip":
        kept_rows = np.flatnonzero(np.isin(patches, native.indices))  # each token sits on its own row
        np.testing.assert_array_equal(assignment[kept_rows], np.arange(call["n_keep"]))
        if call["masses"] is None:  # merged masses = rows merged
            np.testing.assert_array_equal(np.bincount(assignment[assignment >= 0], minlength=call["n_keep"]),
                                          native.masses)
    else:
        assert_selection_assignment(native, call["features"], call["masses"], call["patch_idx"])


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("kind", ["duplicate_rows", "constant", "zeros", "some_zero_rows"])
@pytest.mark.parametrize("n_keep", [1, 4, 16, 575, 576])
def test_native_matches_reference_on_ties_at_full_size(method, kind, n_keep):
    # Duplicate rows tie exactly; the two implementations must break every such tie alike.
    rng = np.random.default_rng(n_keep)
    features = make_rows(kind, rng, 576, 64)
    call = dict(features=features, cls_attn=make_cls_attn("few_levels", rng, 576), n_keep=n_keep,
                keys=make_rows(kind, rng, 576, 16) if method == "visionzip" else None,
                text=features[[5, 300]] if method == "cdpruner" else None)
    assert_same_selection(*select_both(method, **call))


# ---- visionzip -----------------------------------------------------------------------------


@FEW_EXAMPLES
@given(call=baseline_inputs())
def test_visionzip_keeps_the_top_attention_and_all_the_mass(call):
    kept = select(method="visionzip", **call)
    ratio = np.float32(call["options"]["visionzip_dominant_ratio"])
    n_keep = call["n_keep"]
    n_dom = min(n_keep, max(1, int(np.floor(n_keep * float(ratio) + 0.5))))
    dominant = np.argsort(-call["cls_attn"], kind="stable")[:n_dom]  # rows
    masses = np.ones(len(call["features"]), np.float32) if call["masses"] is None else call["masses"]
    patches = np.arange(len(call["features"])) if call["patch_idx"] is None else call["patch_idx"]
    at = np.searchsorted(kept.indices, patches[dominant])
    np.testing.assert_array_equal(kept.indices[at], patches[dominant])
    np.testing.assert_array_equal(kept.features[at], call["features"][dominant])
    if n_dom < n_keep:  # dominant tokens keep their mass, contextual tokens absorb the rest;
        # with no contextual token the dominant ones absorb the rest (a selection)
        np.testing.assert_array_equal(kept.masses[at], masses[dominant])
    assert kept.masses.sum(dtype=np.float64) == pytest.approx(masses.sum(dtype=np.float64), rel=1e-6)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_visionzip_merges_each_key_cluster_into_its_target(impl):
    # 16 tokens, K = 4 at ratio 0.5: rows 0 and 1 dominate; targets are rows 2 and 9 (R[0], R[7]);
    # keys put rows 2..8 near one direction and rows 9..15 near another, features are unrelated.
    rng = np.random.default_rng(0)
    features = rng.standard_normal((16, 8)).astype(np.float32)
    cls_attn = np.r_[1.0, 0.9, np.zeros(14)].astype(np.float32)
    keys = np.repeat(np.eye(2, 4), [9, 7], axis=0) + 0.05 * rng.standard_normal((16, 4))
    masses = rng.uniform(0.5, 3.0, 16).astype(np.float32)
    kept = select(features, cls_attn, n_keep=4, method="visionzip", grid=(4, 4), keys=keys, masses=masses,
                  options=dict(visionzip_dominant_ratio=0.5), impl=impl)
    np.testing.assert_array_equal(kept.indices, [0, 1, 2, 9])
    for k, members in ((2, slice(2, 9)), (3, slice(9, 16))):
        weights = masses[members].astype(np.float64)
        np.testing.assert_allclose(kept.features[k], weights @ features[members] / weights.sum(), rtol=1e-5)
        assert kept.masses[k] == pytest.approx(weights.sum(), rel=1e-6)


# ---- divprune ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("seed", range(5))
def test_divprune_picks_one_token_per_cluster_first(impl, seed):
    rng = np.random.default_rng(seed)
    features, cluster = clustered_rows(rng, n_clusters=6, per_cluster=12, n_dim=16)
    kept = select(features, n_keep=6, method="divprune", grid=(8, 9), impl=impl)
    assert sorted(cluster[kept.indices]) == list(range(6))
    np.testing.assert_array_equal(kept.features, features[kept.indices])


@pytest.mark.parametrize("method", ["divprune", "cdpruner"])
@pytest.mark.parametrize("impl", ["native", "reference"])
def test_identical_tokens_tie_towards_the_lower_rows(method, impl):
    features = np.ones((36, 4), np.float32)
    kept = select(features, n_keep=5, method=method, grid=(6, 6), impl=impl)
    np.testing.assert_array_equal(kept.indices, np.arange(5))


# ---- cdpruner ------------------------------------------------------------------------------


def orthogonal_with_duplicates(rng: np.random.Generator):
    """8 orthogonal directions (random lengths) and 16 exact copies of them, shuffled:
    (rows (24, 8), direction of each row (24,))."""
    direction = rng.permutation(np.r_[np.arange(8), rng.integers(0, 8, 16)])  # (24,)
    rows = np.eye(8)[direction] * rng.uniform(0.5, 2.0, 8)[direction][:, None]
    return rows.astype(np.float32), direction


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("seed", range(5))
def test_cdpruner_never_keeps_a_duplicate_while_a_new_direction_is_left(impl, seed):
    features, direction = orthogonal_with_duplicates(np.random.default_rng(seed))
    kept = select(features, n_keep=8, method="cdpruner", grid=(4, 6), impl=impl)
    assert sorted(direction[kept.indices]) == list(range(8))
    more = select(features, n_keep=12, method="cdpruner", grid=(4, 6), impl=impl)  # K > rank: filled
    assert set(kept.indices) < set(more.indices)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_cdpruner_prefers_tokens_relevant_to_the_text_as_theta_grows(impl):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((36, 64)).astype(np.float32)  # nearly orthogonal
    relevant = np.array([3, 10, 17, 30])
    text = features[relevant].sum(axis=0, keepdims=True)  # (1, 64)

    def kept_with(theta):
        options = dict(cdpruner_theta=theta)
        return set(select(features, n_keep=4, method="cdpruner", grid=(6, 6), text=text, options=options,
                          impl=impl).indices)

    n_relevant = [len(kept_with(theta) & set(relevant)) for theta in (0.0, 0.5, 0.9, 1.0)]
    assert n_relevant == sorted(n_relevant) and n_relevant[-1] == 4
    without_text = set(select(features, n_keep=4, method="cdpruner", grid=(6, 6), impl=impl).indices)
    assert kept_with(0.0) == without_text


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_cdpruner_treats_an_empty_question_as_no_text(impl):
    features = make_rows("normal", np.random.default_rng(1), 36, 16)
    call = dict(n_keep=7, method="cdpruner", grid=(6, 6), impl=impl)
    empty = select(features, text=np.zeros((0, 16), np.float32), **call)
    np.testing.assert_array_equal(empty.indices, select(features, **call).indices)


# ---- every baseline ------------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("impl", ["native", "reference"])
def test_keeping_every_token_returns_the_input(method, impl):
    rng = np.random.default_rng(2)
    features, cls_attn = make_rows("normal", rng, 30, 8), make_cls_attn("softmax", rng, 30)
    masses = rng.uniform(0.5, 2.0, 30).astype(np.float32)
    kept = select(features, cls_attn, n_keep=30, method=method, grid=(5, 6), masses=masses, impl=impl)
    np.testing.assert_array_equal(kept.indices, np.arange(30))
    np.testing.assert_array_equal(kept.features, features)
    np.testing.assert_array_equal(kept.masses, masses)


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("impl", ["native", "reference"])
def test_keeping_one_token_returns_an_input_token(method, impl):
    rng = np.random.default_rng(3)
    features, cls_attn = make_rows("normal", rng, 30, 8), make_cls_attn("softmax", rng, 30)
    kept = select(features, cls_attn, n_keep=1, method=method, grid=(5, 6), impl=impl)
    np.testing.assert_array_equal(kept.features, features[kept.indices])
    if method == "visionzip":  # K = 1 leaves room for the one dominant token only
        np.testing.assert_array_equal(kept.indices, [np.argmax(cls_attn)])


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_visionzip_without_cls_attn_names_cls_attn(impl):
    features = make_rows("normal", np.random.default_rng(4), 36, 8)
    with pytest.raises(InputError, match=r"^cls_attn: method 'visionzip' needs"):
        select(features, n_keep=4, method="visionzip", grid=(6, 6), impl=impl)


@pytest.mark.parametrize("text_shape", [(2, 7), (8,), (1, 2, 8)])
@pytest.mark.parametrize("impl", ["native", "reference"])
def test_text_of_the_wrong_shape_names_text(text_shape, impl):
    features = make_rows("normal", np.random.default_rng(5), 36, 8)
    with pytest.raises(InputError, match=r"^text: expected shape \(N, 8\)"):
        select(features, n_keep=4, method="cdpruner", grid=(6, 6), text=np.ones(text_shape), impl=impl)
