"""DCP-Prune (acgr, tatcs, dcp): native == NumPy twin on random and adversarial tokens, and each
stage does what native/prune.h says it does."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcp_desktop.errors import InputError
from dcp_desktop.prune import Selection, select
from test_prune import ATTN_KINDS, FEATURE_KINDS, GRIDS, make_cls_attn, make_features

DCP_METHODS = ("acgr", "tatcs", "dcp")
IMPLS = ("native", "reference")
FEW_EXAMPLES = settings(max_examples=60, deadline=None)
TAU_FORCING_TATCS, TAU_FORCING_ACGR = 0.0, 1e9


# ---- input builders ------------------------------------------------------------------------


def make_dcp_features(kind: str, rng: np.random.Generator, n_tokens: int, n_dim: int) -> np.ndarray:
    """test_prune's kinds plus "quantized": entries in {-1, 0, 1}, so distinct rows often have
    exactly equal cosines to a third (ties that are not duplicates)."""
    if kind == "quantized":
        return rng.integers(-1, 2, (n_tokens, n_dim)).astype(np.float32)
    return make_features(kind, rng, n_tokens, n_dim)


@st.composite
def dcp_tokens(draw):
    """Keyword arguments for select: features, cls_attn, grid, and maybe keys, text, masses and a
    patch_idx subset of the grid (the in-encoder case)."""
    grid = draw(st.sampled_from(GRIDS) | st.tuples(st.integers(1, 8), st.integers(1, 8)))
    n_grid = grid[0] * grid[1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    patch_idx = None
    if draw(st.booleans()):
        patch_idx = np.sort(rng.choice(n_grid, int(rng.integers(1, n_grid + 1)), replace=False)).astype(np.int32)
    n_tokens = n_grid if patch_idx is None else len(patch_idx)
    n_dim = draw(st.sampled_from([1, 3, 16, 17, 40]))
    kinds = st.sampled_from(FEATURE_KINDS + ["quantized"])
    tokens = dict(
        features=make_dcp_features(draw(kinds), rng, n_tokens, n_dim),
        cls_attn=make_cls_attn(draw(st.sampled_from(ATTN_KINDS)), rng, n_tokens),
        grid=grid, patch_idx=patch_idx)
    if draw(st.booleans()):
        tokens["keys"] = make_dcp_features(draw(kinds), rng, n_tokens, 5)
    if draw(st.booleans()):
        tokens["text"] = make_dcp_features(draw(kinds), rng, int(rng.integers(0, 4)), n_dim)  # may be empty
    if draw(st.booleans()):
        tokens["masses"] = rng.choice([1.0, 2.0, 3.5, 36.0], n_tokens).astype(np.float32)
    return tokens


dcp_options = st.fixed_dictionaries({
    "tau": st.sampled_from([TAU_FORCING_TATCS, 0.5, TAU_FORCING_ACGR]),
    "acgr_n_neighbors": st.sampled_from([1, 2, 3, 50]),
    "acgr_spatial_weight": st.sampled_from([0.0, 0.5, 2.0]),
    "acgr_spatial_sigma": st.sampled_from([0.5, 2.0, 7.0]),
    "tatcs_text_weight": st.sampled_from([0.0, 0.5, 3.0]),
    "tatcs_relevance_mix": st.sampled_from([0.0, 0.5, 1.0]),
    "acgr_self_share": st.sampled_from([0.0, 0.5, 1.0]),
    "acgr_min_similarity": st.sampled_from([-1.0, 0.0, 0.5]),
    "dcp_anchors_per_token": st.sampled_from([0, 1, 4, 64]),
    "tatcs_reselect": st.sampled_from([0, 1]),
    "tatcs_use_text": st.sampled_from([0, 1]),
    "tatcs_reselect_by": st.sampled_from([0, 1]),
})


def clustered_image(n_clusters=8, n_dim=64, seed=0):
    """A 24×24 image whose patches come from a few well-separated clusters, with [CLS]
    attention concentrated on the patches of cluster 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, n_dim)) * 3  # (k, d)
    label = rng.integers(0, n_clusters, 576)  # (n,)
    features = (centres[label] + rng.standard_normal((576, n_dim))).astype(np.float32)  # (n, d)
    cls_attn = np.where(label == 0, 1.0, 0.01) * rng.uniform(0.5, 1.0, 576)  # (n,)
    return features, (cls_attn / cls_attn.sum()).astype(np.float32), label


def assert_same_tokens(a: Selection, b: Selection) -> None:
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.masses, b.masses, rtol=1e-5)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    assert a.kappa == pytest.approx(b.kappa, rel=1e-4, abs=1e-4)
    assert a.used_tatcs == b.used_tatcs
    np.testing.assert_array_equal(a.assignment, b.assignment)
    assert a.assignment.dtype == np.int32


# ---- native == reference -------------------------------------------------------------------


@pytest.mark.parametrize("method", DCP_METHODS)
@FEW_EXAMPLES
@given(tokens=dcp_tokens(), options=dcp_options, data=st.data())
def test_native_matches_reference(method, tokens, options, data):
    n_tokens = len(tokens["features"])
    n_keep = data.draw(st.sampled_from(sorted({1, max(1, n_tokens - 1), n_tokens})) | st.integers(1, n_tokens))
    native = select(**tokens, n_keep=n_keep, method=method, options=options)
    reference = select(**tokens, n_keep=n_keep, method=method, options=options, impl="reference")
    assert_same_tokens(native, reference)
    assert native.features.shape == (n_keep, tokens["features"].shape[1])
    assert np.all(np.diff(native.indices) > 0), "indices must be strictly ascending"
    assert np.isin(native.indices, tokens["patch_idx"] if tokens["patch_idx"] is not None else native.indices).all()
    assert native.used_tatcs == {"acgr": False, "tatcs": True}.get(method, native.used_tatcs)
    assignment = native.assignment
    assert assignment.shape == (n_tokens,) and assignment.min() >= -1 and assignment.max() < n_keep
    patches = tokens["patch_idx"] if tokens["patch_idx"] is not None else np.arange(n_tokens)
    kept_rows = np.flatnonzero(np.isin(patches, native.indices))  # each token sits on its own row
    np.testing.assert_array_equal(assignment[kept_rows], np.arange(n_keep))
    if method == "tatcs":
        assert (assignment >= 0).all()  # TATCS clusters every row
    whole_rows = method == "tatcs" or options["acgr_n_neighbors"] == 1 or (  # w = 1: whole rows move
        native.used_tatcs and options["dcp_anchors_per_token"] == 0)
    if tokens.get("masses") is None and whole_rows:
        np.testing.assert_array_equal(np.bincount(assignment[assignment >= 0], minlength=n_keep), native.masses)


def tatcs_on_recovered_anchors(tokens: dict, n_keep: int, options: dict, impl: str = "native") -> Selection:
    """What dcp's second stage must equal, composed from the public methods: acgr with M anchors, then
    tatcs on its output (recovered features, masses, the anchors' attention and patches, no keys)."""
    n_tokens = len(tokens["features"])
    n_anchors = min(n_tokens, int(options["dcp_anchors_per_token"]) * n_keep)
    recovered = select(**tokens, n_keep=n_anchors, method="acgr", options=options, impl=impl)
    patches = tokens["patch_idx"] if tokens.get("patch_idx") is not None else np.arange(n_tokens)
    rows = np.searchsorted(patches, recovered.indices)  # (M,) the anchors' input rows
    on_anchors = dict(grid=tokens["grid"], text=tokens.get("text"), patch_idx=recovered.indices)
    clustered = select(recovered.features, tokens["cls_attn"][rows], n_keep=n_keep, method="tatcs",
                       masses=recovered.masses, options=options, impl=impl, **on_anchors)
    assignment = np.where(recovered.assignment >= 0, clustered.assignment[np.maximum(recovered.assignment, 0)], -1)
    return Selection(clustered.indices, clustered.features, clustered.masses,
                     select(**tokens, n_keep=n_keep, method="dcp", options=options, impl=impl).kappa,
                     True, assignment.astype(np.int32))


@FEW_EXAMPLES
@given(tokens=dcp_tokens(), options=dcp_options, data=st.data())
def test_dcp_returns_the_stage_it_reports(tokens, options, data):
    n_keep = data.draw(st.integers(1, len(tokens["features"])))
    dcp = select(**tokens, n_keep=n_keep, method="dcp", options=options)
    if not dcp.used_tatcs:
        stage = select(**tokens, n_keep=n_keep, method="acgr", options=options)
    elif options["dcp_anchors_per_token"] == 0:
        stage = select(**tokens, n_keep=n_keep, method="tatcs", options=options)
    else:
        stage = tatcs_on_recovered_anchors(tokens, n_keep, options)
    assert_same_tokens(dcp, stage)  # κ_dcp is the κ of whichever stage was used
    if options["tau"] == TAU_FORCING_ACGR:
        assert not dcp.used_tatcs


@pytest.mark.parametrize("method", DCP_METHODS)
@pytest.mark.parametrize("with_keys", [False, True])
def test_native_matches_reference_on_a_clustered_image_with_text(method, with_keys):
    features, cls_attn, _ = clustered_image(n_dim=200)
    rng = np.random.default_rng(1)
    extra = dict(text=rng.standard_normal((6, 200)).astype(np.float32),
                 keys=rng.standard_normal((576, 48)).astype(np.float32) if with_keys else None)
    native = select(features, cls_attn, n_keep=16, method=method, **extra)
    assert_same_tokens(native, select(features, cls_attn, n_keep=16, method=method, impl="reference", **extra))


# ---- acgr ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_keeping_every_token_is_the_identity(impl):
    features, cls_attn, _ = clustered_image()
    masses = np.random.default_rng(0).uniform(1, 4, 576).astype(np.float32)
    kept = select(features, cls_attn, n_keep=576, method="acgr", masses=masses, impl=impl)
    np.testing.assert_array_equal(kept.indices, np.arange(576))
    np.testing.assert_array_equal(kept.features, features)
    np.testing.assert_array_equal(kept.masses, masses)
    assert not kept.used_tatcs


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_masses_add_up_when_every_context_token_links(impl):
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 1, (576, 32)).astype(np.float32)  # no negative cosine
    masses = rng.uniform(1, 4, 576).astype(np.float32)
    cls_attn = make_cls_attn("softmax", rng, 576)
    kept = select(features, cls_attn, n_keep=16, method="acgr", masses=masses, impl=impl,
                  options={"acgr_spatial_weight": 0.5})
    assert kept.masses.sum() == pytest.approx(masses.sum(), rel=1e-5)


def orthogonal_tokens(n_tokens=12, n_dim=16):
    """Orthonormal one-hot rows (cosine 0 between any two) with cls_attn descending by row."""
    features = np.eye(n_dim, dtype=np.float32)[:n_tokens]  # (n, d)
    cls_attn = np.linspace(1.0, 0.5, n_tokens).astype(np.float32)  # rows 0, 1, ... are anchors first
    return features, cls_attn


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_drops_context_tokens_with_no_positive_link(impl):
    features, cls_attn = orthogonal_tokens()
    features[11] = -features[:4].sum(axis=0)  # negative cosine to each of the 4 anchors
    features[10] = features[3] - 0.1 * features[10]  # the only context row like an anchor
    kept = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                  options={"acgr_spatial_weight": 0.0})
    np.testing.assert_array_equal(kept.indices, [0, 1, 2, 3])
    np.testing.assert_array_equal(kept.features[:3], features[:3])
    np.testing.assert_array_equal(kept.masses, [1, 1, 1, 2])  # rows 4-9 (cosine 0) and 11 dropped


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_moves_only_the_anchor_a_context_token_resembles(impl):
    features, cls_attn = orthogonal_tokens()
    features[8] = features[2] + 0.5 * features[8]  # like anchor 2, orthogonal to the others
    features[9] = features[1]  # a duplicate of anchor 1
    kept = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                  options={"acgr_spatial_weight": 0.0, "acgr_n_neighbors": 4})
    moved = np.flatnonzero(np.any(kept.features != features[:4], axis=1))
    np.testing.assert_array_equal(moved, [2])
    assert np.dot(kept.features[2], features[8]) > np.dot(features[2], features[8])  # pulled towards it
    np.testing.assert_array_equal(kept.masses, [1, 2, 2, 1])  # the duplicate adds mass, not change


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_spatial_term_links_each_token_to_its_nearest_anchor_on_the_grid(impl):
    # with acgr_min_similarity = -1 any cosine counts, so proximity decides (the default, 0, forbids it)
    grid_h, grid_w = 6, 7
    features = np.zeros((grid_h * grid_w, 4), np.float32)  # no semantic similarity at all
    cls_attn = np.zeros(grid_h * grid_w, np.float32)
    anchors = np.array([0, 13, 30, 39])  # no two anchors equally near a patch by different (Δr, Δc)
    cls_attn[anchors] = 1.0
    kept = select(features, cls_attn, n_keep=4, method="acgr", grid=(grid_h, grid_w), impl=impl,
                  options={"acgr_spatial_weight": 1.0, "acgr_n_neighbors": 1, "acgr_min_similarity": -1.0})
    rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)
    distance2 = (rows[:, None] - rows[anchors]) ** 2 + (cols[:, None] - cols[anchors]) ** 2  # (n, 4)
    nearest = np.argmin(distance2, axis=1)  # first minimum: the lower anchor row, as the contract
    np.testing.assert_array_equal(kept.indices, anchors)
    np.testing.assert_array_equal(kept.masses, np.bincount(nearest, minlength=4))


# ---- tatcs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_tatcs_keeping_every_token_returns_every_row(impl):
    features, cls_attn, _ = clustered_image()
    kept = select(features, cls_attn, n_keep=576, method="tatcs", impl=impl)
    np.testing.assert_array_equal(kept.indices, np.arange(576))
    np.testing.assert_array_equal(kept.features, features)
    np.testing.assert_array_equal(kept.masses, np.ones(576))
    assert kept.used_tatcs


@pytest.mark.parametrize("impl", IMPLS)
def test_tatcs_keeps_one_token_per_cluster(impl):
    features, cls_attn, label = clustered_image(n_clusters=8)
    kept = select(features, cls_attn, n_keep=8, method="tatcs", impl=impl)
    assert sorted(label[kept.indices]) == list(range(8))
    np.testing.assert_array_equal(kept.masses, np.bincount(label)[label[kept.indices]])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_keep", [1, 2])
def test_tatcs_selects_the_token_most_relevant_to_the_text(impl, n_keep):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 32)).astype(np.float32)  # (2, d) two uniform clusters
    features = np.repeat(base, 18, axis=0)  # (36, d) rows 0-17 and 18-35
    question = rng.standard_normal((1, 32)).astype(np.float32)
    features[23] += question[0]  # one token of the second cluster leans towards the question
    cls_attn = make_cls_attn("all_equal", rng, 36)
    cls_attn[23] /= 10  # so it is not the first centre: reselection must find it
    kept = select(features, cls_attn, n_keep=n_keep, method="tatcs", grid=(6, 6), text=question,
                  options={"tatcs_relevance_mix": 1.0, "tatcs_use_text": 1}, impl=impl)
    assert 23 in kept.indices


def test_tatcs_without_text_is_the_empty_question_and_text_free_tatcs():
    features, cls_attn, _ = clustered_image()
    no_text = select(features, cls_attn, n_keep=16, method="tatcs")
    assert_same_tokens(no_text, select(features, cls_attn, n_keep=16, method="tatcs", text=np.zeros((0, 64))))
    question = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    assert_same_tokens(no_text, select(features, cls_attn, n_keep=16, method="tatcs", text=question,
                                       options={"tatcs_use_text": 0}))


# ---- dcp -----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_dcp_reclusters_the_recovered_anchors_when_acgr_drifts(impl):
    features, cls_attn, _ = clustered_image()
    tokens = dict(features=features, cls_attn=cls_attn, grid=(24, 24))
    acgr = select(**tokens, n_keep=16, method="acgr", impl=impl)
    options = {"tau": 0.0, "dcp_anchors_per_token": 4}
    dcp = select(**tokens, n_keep=16, method="dcp", impl=impl, options=options)
    assert dcp.used_tatcs and dcp.kappa < acgr.kappa
    assert_same_tokens(dcp, tatcs_on_recovered_anchors(tokens, 16, options, impl))
    anchors = np.sort(np.argsort(-cls_attn, kind="stable")[:64])  # M = 4·K, the top attention
    assert np.isin(dcp.indices, anchors).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tau, stage", [(TAU_FORCING_TATCS, "tatcs"), (TAU_FORCING_ACGR, "acgr")])
def test_tau_forces_a_stage(impl, tau, stage):
    rng = np.random.default_rng(0)
    features, cls_attn = make_features("normal", rng, 576, 32), make_cls_attn("softmax", rng, 576)
    options = {"tau": tau, "dcp_anchors_per_token": 0}  # 0: TATCS on every input row
    dcp = select(features, cls_attn, n_keep=16, method="dcp", options=options, impl=impl)
    assert dcp.used_tatcs == (stage == "tatcs")
    assert_same_tokens(dcp, select(features, cls_attn, n_keep=16, method=stage, options=options, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_keep", [1, 16, 144])
@pytest.mark.parametrize("kind", ["duplicate_rows", "constant", "zeros", "quantized"])
def test_dcp_native_matches_reference_on_ties_at_full_size(impl, n_keep, kind):
    rng = np.random.default_rng(n_keep)
    features = make_dcp_features(kind, rng, 576, 24)
    cls_attn = make_cls_attn("softmax", rng, 576)
    text = make_dcp_features("normal", rng, 3, 24)
    for options in ({"tau": 0.0}, {"tau": 0.0, "dcp_anchors_per_token": 4, "tatcs_use_text": 1},
                    {"tau": 0.0, "tatcs_reselect": 0, "acgr_min_similarity": -1.0, "dcp_anchors_per_token": 2}):
        native = select(features, cls_attn, n_keep=n_keep, method="dcp", text=text, options=options)
        assert_same_tokens(native, select(features, cls_attn, n_keep=n_keep, method="dcp", text=text,
                                          options=options, impl="reference"))


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_anchor_keeps_its_share_of_its_own_feature(impl):
    features, cls_attn = orthogonal_tokens()
    features[4:] = features[0] * 0.8 + features[4] * 0.6  # 8 context rows, cos 0.8 to anchor 0 only
    kept = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                  options={"acgr_spatial_weight": 0.0, "acgr_n_neighbors": 1, "acgr_self_share": 0.5})
    absorbed = features[4]  # every context row is the same
    np.testing.assert_allclose(kept.features[0], 0.5 * features[0] + 0.5 * absorbed, atol=1e-6)
    assert kept.masses[0] == 9  # the mass still counts every absorbed row
    diluted = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                     options={"acgr_spatial_weight": 0.0, "acgr_n_neighbors": 1, "acgr_self_share": 0.0})
    assert np.dot(diluted.features[0], features[0]) < np.dot(kept.features[0], features[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_acgr_links_need_semantic_similarity(impl):
    features, cls_attn = orthogonal_tokens()
    features[5] = features[1] * 0.3 + features[5]  # cos ≈ 0.29 to anchor 1
    options = {"acgr_spatial_weight": 10.0, "acgr_n_neighbors": 1}
    loose = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                   options={**options, "acgr_min_similarity": 0.0})
    strict = select(features, cls_attn, n_keep=4, method="acgr", grid=(3, 4), impl=impl,
                    options={**options, "acgr_min_similarity": 0.5})
    np.testing.assert_array_equal(loose.masses, [1, 2, 1, 1])  # only row 5 has a positive cosine
    np.testing.assert_array_equal(strict.masses, [1, 1, 1, 1])  # and 0.29 is not enough
    assert (strict.assignment[4:] == -1).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_tatcs_reselect_keeps_the_representative_row(impl):
    features, cls_attn, label = clustered_image(n_clusters=8)
    kept = select(features, cls_attn, n_keep=8, method="tatcs", impl=impl, options={"tatcs_reselect": 1})
    np.testing.assert_array_equal(kept.features, features[kept.indices])
    np.testing.assert_array_equal(kept.masses, np.bincount(label)[label[kept.indices]])
    merged = select(features, cls_attn, n_keep=8, method="tatcs", impl=impl, options={"tatcs_reselect": 0})
    np.testing.assert_array_equal(merged.indices, kept.indices)
    assert not np.allclose(merged.features, kept.features)


@pytest.mark.parametrize("impl", IMPLS)
def test_dcp_keeps_acgr_when_it_loses_nothing_even_at_tau_0(impl):
    features, cls_attn = make_features("duplicate_rows", np.random.default_rng(0), 36, 8), np.ones(36, np.float32)
    dcp = select(features, cls_attn, n_keep=35, method="dcp", grid=(6, 6), options={"tau": 0.0}, impl=impl)
    assert not dcp.used_tatcs and dcp.kappa <= 1e-4  # κ of a lossless ACGR is rounding noise


@pytest.mark.parametrize("impl", IMPLS)
def test_in_encoder_subset_with_masses(impl):
    rng = np.random.default_rng(0)
    patch_idx = np.sort(rng.choice(576, 144, replace=False)).astype(np.int32)  # after in-encoder pruning
    masses = rng.uniform(1, 8, 144).astype(np.float32)
    features, cls_attn = make_features("normal", rng, 144, 16), make_cls_attn("softmax", rng, 144)
    kept = {method: select(features, cls_attn, n_keep=16, method=method, patch_idx=patch_idx, masses=masses,
                           impl=impl) for method in DCP_METHODS}
    assert all(np.isin(k.indices, patch_idx).all() for k in kept.values())
    assert kept["acgr"].masses.sum() <= masses.sum() * (1 + 1e-6)  # less what no anchor absorbed
    assert kept["tatcs"].masses.sum() == pytest.approx(masses.sum(), rel=1e-5)  # every row is in a cluster


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", DCP_METHODS)
def test_missing_cls_attn_is_an_input_error(impl, method):
    features = make_features("normal", np.random.default_rng(0), 576, 8)
    with pytest.raises(InputError, match="cls_attn"):
        select(features, None, n_keep=16, method=method, impl=impl)
