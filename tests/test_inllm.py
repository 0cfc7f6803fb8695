"""In-LLM pruning (dcp_desktop/inllm/): the hook that lets a question decoded after the image prune it as one
prefill would, the three methods' choices on hand-made inputs, their schedules and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_main
from dcp_desktop import models
from dcp_desktop.errors import InputError
from dcp_desktop.inllm import btp, make_pruner, parse_options
from dcp_desktop.inllm.btp import BTP, layers_from_shifts, max_min_fill, rebalanced_top, spatial_spread
from dcp_desktop.inllm.fastv import FastV
from dcp_desktop.inllm.hook import StagePruner
from dcp_desktop.inllm.pyramiddrop import PyramidDrop
from dcp_desktop.inllm.schedule import geometric_budgets, make_schedule
from dcp_desktop.inllm.view import StageView, top_k
from dcp_desktop.gguf_file import VisionConfig
from dcp_desktop.pipeline import PipelineOptions, check_budget
from dcp_desktop.torch_llama import Hooks, TorchLlama

N, WIDTH = 576, 24
PREFIX = np.array([1, 7, 9, 11])  # a stand-in system prompt and `USER:`
QUESTION = np.array([21, 30, 44, 52, 60, 13])  # a stand-in `\n{question} ASSISTANT:`


@pytest.fixture(scope="module")
def demo():
    """The demo model's LLM (3 decoder layers: two stages fit) with float32 keys and values."""
    with TorchLlama(models.BUNDLED["demo"].files.llm, n_ctx=2048, kv_f16=False, n_threads=1) as llm:
        yield llm


@pytest.fixture(scope="module")
def image():
    return (0.5 * np.random.default_rng(0).standard_normal((N, 128))).astype(np.float32)


def _split(llm: TorchLlama, hooks, image: np.ndarray) -> np.ndarray:
    """As the engine runs a turn: the prefix, the image rows (in two batches, 512 + 64), the question."""
    llm.remove(0)
    llm.decode(np.arange(4), tokens=PREFIX)
    llm.hooks = hooks
    try:
        llm.decode(np.arange(4, 516), rows=image[:512])
        llm.decode(np.arange(516, 580), rows=image[512:])
        llm.decode(np.arange(580, 586), tokens=QUESTION)
    finally:
        llm.hooks = Hooks()
    return llm.logits()


def _one_batch(llm: TorchLlama, hooks, image: np.ndarray) -> np.ndarray:
    """One prefill of image + question in a single batch: the hook drops rows, nothing is set aside."""
    llm.remove(0)
    llm.decode(np.arange(4), tokens=PREFIX)
    text = llm.net.model.embed_tokens(torch.as_tensor(QUESTION)).numpy()
    llm.hooks = hooks
    try:
        llm.decode(np.arange(4, 586), rows=np.concatenate([image, text]))
    finally:
        llm.hooks = Hooks()
    return llm.logits()


def _pruner(method, layers=(0, 1), k=16, start=None) -> StagePruner:
    schedule = make_schedule(layers, None, n_keep=k, n_full=N, n_layers=3)
    return StagePruner(method, schedule, n_full=N, grid_width=WIDTH, start=start)


@pytest.mark.parametrize("method, layers", [(BTP(0.6), (0, 1)), (FastV("text"), (0,)), (PyramidDrop(), (0, 1))])
def test_pruning_a_question_decoded_after_the_image_is_one_prefill(demo, image, method, layers):
    split, single = _pruner(method, layers), _pruner(method, layers, start=4)
    flops = demo.flops
    split_logits = _split(demo, split, image)
    split_flops, flops = demo.flops - flops, demo.flops
    assert demo.cells_per_layer(4, 580) == split.schedule.tokens_per_layer(N, 3)  # e.g. 576, 96, 16
    single_logits = _one_batch(demo, single, image)
    assert demo.flops - flops == split_flops  # the same work, row for row
    for a, b in zip(split.kept, single.kept):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(split_logits, single_logits, atol=1e-4)


class _DropCachedCells(Hooks):
    """The shortcut hook.py does not take: let the image run through every layer, and when the question
    reaches `layer`, remove the pruned image cells from the later layers' caches."""

    def __init__(self, llm, layer, gone):
        super().__init__()
        self.llm, self.layer, self.gone = llm, layer, torch.as_tensor(gone)

    def after_layer(self, layer, batch):
        if layer == self.layer and not batch.embedded:
            for cache in self.llm.cache[layer + 1:]:
                keep = ~torch.isin(cache.positions, self.gone)
                cache.keys, cache.values = cache.keys[:, keep], cache.values[:, keep]
                cache.positions, cache.bias = cache.positions[keep], cache.bias[keep]


def test_removing_cached_cells_instead_is_not_one_prefill(demo, image):
    """The kept rows' cells in layers > L + 1 were computed attending to the rows pruned at L."""
    pruner = _pruner(FastV(), (0,), start=4)
    single_logits = _one_batch(demo, pruner, image)
    gone = 4 + np.setdiff1d(np.arange(N), pruner.kept[0])
    shortcut_logits = _split(demo, _DropCachedCells(demo, 0, gone), image)
    assert np.abs(shortcut_logits - single_logits).max() > 1e-3


@pytest.mark.parametrize("method, layers, budgets", [(BTP(0.6), (0, 1), [96, 16]), (PyramidDrop(), (0, 1), [96, 16]),
                                                     (FastV(), (1,), [16])])
def test_stages_keep_their_budgets_nested_and_the_same_each_time(demo, image, method, layers, budgets):
    runs = []
    for _ in range(2):
        pruner = _pruner(method, layers, k=16)
        _split(demo, pruner, image)
        runs.append(pruner.kept)
    assert [len(kept) for kept in runs[0]] == budgets  # geometric: 576 · (16/576)^(1/2) = 96, then 16
    for earlier, later in zip(runs[0], runs[0][1:]):
        assert set(later) <= set(earlier)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_answer_tokens_after_the_pruned_image_pass_every_layer(demo, image):
    pruner = _pruner(PyramidDrop(), (0, 1))
    _split(demo, pruner, image)
    demo.hooks = pruner
    try:
        demo.decode(np.array([586]), tokens=np.array([5]))  # an answer token: nothing left to prune
    finally:
        demo.hooks = Hooks()
    assert demo.cells_per_layer(586, 587) == [1, 1, 1] and len(pruner.kept) == 2


# ---- the methods' choices on hand-made inputs -------------------------------------------------------------

def _view(last, *, text=None, hidden=None, grid=None, budget=2, stage=0, n_stages=1, width=3) -> StageView:
    last = np.asarray(last, dtype=np.float64)
    n = len(last)
    return StageView(stage, n_stages, budget, last, last if text is None else np.asarray(text),
                     np.eye(n) if hidden is None else np.asarray(hidden, dtype=np.float64),
                     np.arange(n) if grid is None else np.asarray(grid), width)


def test_top_k_breaks_ties_toward_the_earlier_token():
    assert top_k(np.array([0.2, 0.5, 0.5, 0.1]), 2).tolist() == [1, 2]


def test_fastv_ranks_by_the_last_token_or_the_whole_question():
    view = _view([0.1, 0.4, 0.3, 0.2], text=[0.5, 0.1, 0.1, 0.3])
    assert sorted(FastV("last").select(view)) == [1, 2]
    assert sorted(FastV("text").select(view)) == [0, 3]
    assert sorted(PyramidDrop().select(view)) == [1, 2]


def test_rebalancing_keeps_early_tokens_the_position_bias_would_lose():
    # 8 tokens; by attention alone the best 2 are 7 and 6 (late, where RoPE favours). Over-selecting
    # ceil(1.5 · 2) = 3 brings in token 1 from the first half, which goes first: [1, 7].
    scores = np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.6, 0.9])
    assert rebalanced_top(scores, 2).tolist() == [1, 7]
    # when the first half alone holds more than k of the over-selected, its k best
    assert rebalanced_top(np.array([0.9, 0.8, 0.7, 0.0, 0.0, 0.0]), 2).tolist() == [0, 1]


def test_spatial_spread_is_the_greedy_max_min_set_on_the_grid():
    # 3×3 grid from patch 0: the far corner 8 (distance 4), then 2 (2 from both; the first of the ties
    # 2, 4, 6), then 4 (2 from each of 0, 8 and 2; 6 ties with it and comes later)
    grid = np.arange(9)
    assert spatial_spread(grid, 3, 4, exclude=[]) == [0, 8, 2, 4]
    assert spatial_spread(grid, 3, 2, exclude=[0, 8]) == [2, 4]  # the same order, taken ones skipped


def test_max_min_fill_adds_the_farthest_token_each_time():
    # unit vectors at 0°, 10°, 90°, 180°: from {0°}, 180° is farthest (distance 2), then 90° (1 from both)
    angles = np.radians([0, 10, 90, 180])
    hidden = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert max_min_fill(hidden, [0], 3).tolist() == [0, 3, 2]
    assert max_min_fill(hidden, [], 1).tolist() == [3]  # the most isolated: 180° (1 from its nearest, 90°)


def test_btp_splits_each_stage_between_attention_and_diversity():
    last = np.array([0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.8])  # 3×3 grid: the corners 0 and 8 matter
    # first stage, λ = 0.5 of 4: 2 by attention (0, 8), then the grid spread skipping them (2, 4)
    assert sorted(BTP(0.5).select(_view(last, budget=4, n_stages=2))) == [0, 2, 4, 8]
    # last stage of two: λ ramps to 1.0, attention alone
    assert sorted(BTP(0.5).select(_view(last, budget=2, stage=1, n_stages=2))) == [0, 8]
    assert [BTP(0.6).weight(i, 3) for i in range(3)] == pytest.approx([0.6, 0.8, 1.0])  # Table 7


def test_btp_layers_sit_where_image_tokens_start_and_stop_shifting():
    assert layers_from_shifts(np.array([0.0, 0.0, 0.6, 0.3, 0.25, 0.0, 0.0])) == (1, 4)
    assert layers_from_shifts(np.array([0.15, 0.10, 0.19])) == (0, 1)
    assert layers_from_shifts(np.full(4, 0.2)) == ()
    assert btp.default_layers(32) == (2, 5, 13)  # the authors' LLaVA-1.5 layers


# ---- schedules and options ------------------------------------------------------------------------

def test_budgets_shrink_by_one_fraction_per_stage_to_the_budget():
    assert geometric_budgets(16, 576, 2) == (96, 16)
    assert geometric_budgets(64, 576, 1) == (64,)
    assert geometric_budgets(144, 576, 2) == (288, 144)
    schedule = make_schedule((0, 1), (200, 64), n_keep=64, n_full=N, n_layers=3)
    assert schedule.tokens_per_layer(N, 3) == [576, 200, 64]


@pytest.mark.parametrize("layers, budgets, message", [
    ((2,), None, "btp_layers=2: layer 2 is out of range; this model has 3 decoder layers, so prune after layer 0..1"),
    ((-1,), None, "layer -1 is out of range"),
    ((), None, "expected at least one decoder layer"),
    ((1, 0), None, "expected ascending layers"),
    ((0, 1), (16, 32), "btp_budgets=16,32: stage 2 keeps 32 image tokens, more than the 16 stage 1 left"),
    ((0, 1), (96,), "2 stages but 1 budgets"),
    ((0, 1), (96, 32), "the last stage keeps 32 tokens but the budget (--tokens) is 16"),
    ((0, 1), (600, 16), "expected 1..576 image tokens per stage"),
])
def test_bad_schedules_say_what_is_wrong(layers, budgets, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_schedule(layers, budgets, n_keep=16, n_full=N, n_layers=3, names=("btp_layers", "btp_budgets"))


def test_options_parse_and_name_the_bad_ones():
    assert parse_options(["btp_layers=0,1", "btp_lambda=0.3", "fastv_query=text"]) == {
        "btp_layers": (0, 1), "btp_lambda": 0.3, "fastv_query": "text"}
    for pair, message in [("btp_lambda=2", "expected btp_lambda=<a number in"), ("fastv_query=all", "last or text"),
                          ("tau=1", "unknown knob 'tau'")]:
        with pytest.raises(InputError, match=message):
            parse_options([pair])
    pruner = make_pruner("pyramiddrop", {"pyramiddrop_layers": (0, 1)}, n_keep=64, n_full=N, n_layers=3,
                         grid_width=WIDTH)
    assert pruner.schedule.budgets == (192, 64)
    assert make_pruner("fastv", {}, n_keep=64, n_full=N, n_layers=32, grid_width=WIDTH).schedule.layers == (1,)


VIT_L = VisionConfig(image_size=336, patch_size=14, width=1024, ff_width=4096, n_heads=16, n_blocks=23, eps=1e-5,
                     quick_gelu=True, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), proj_hidden=4096,
                     n_embd=4096)


def test_in_llm_methods_need_the_torch_engine():
    with pytest.raises(InputError, match="--method btp prunes inside the language model.*--engine torch"):
        check_budget(PipelineOptions(method="btp", n_keep=16), VIT_L)
    assert check_budget(PipelineOptions(method="btp", n_keep=16, engine="torch"), VIT_L) == (16, None, 576)


def test_dcp_eval_refuses_in_llm_methods_on_llamacpp(tiny, capsys):
    from dcp_desktop.eval.cli import main

    code, out, err = run_main(main, capsys, "--model", tiny.dir, "--n", 1, "--methods", "fastv", "--tokens", 16,
                              "--threads", 1, "--quiet")
    assert code == 2 and "add --engine torch" in err
