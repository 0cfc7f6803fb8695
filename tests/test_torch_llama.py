"""The PyTorch engine (dcp_desktop/torch_llama.py): the same next-token logits as llama.cpp on the demo
model, and its two evaluation hooks (an attention bias per cell, rows dropped between layers) checked
against computations made another way. Run with -s to print the measured distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from dcp_desktop import models, scenes
from dcp_desktop.engine import Engine, ImageRows
from dcp_desktop.pipeline import Pipeline, PipelineOptions
from dcp_desktop.torch_llama import Hooks, TorchLlama

LOGIT_TOLERANCE = 1e-2  # measured 1.7e-3 (576 rows) and 4.6e-3 (16 rows at grid positions) on 2026-12-02
DEMO = models.BUNDLED["demo"]


@pytest.fixture(scope="module")
def demo_rows():
    """One validation image's rows for the demo model: all 576, and dcp's 16 at their grid positions."""
    item = scenes.make_split("validation", 1, 1)[0]
    options = PipelineOptions(method="full", vision_dtype="float32", n_threads=2)
    with Pipeline(DEMO.files, options) as pipe:
        encoded = pipe.encode_image(item.image())
        full = pipe.prepare(encoded, item.question).rows("grid")
        pipe.configure(PipelineOptions(method="dcp", n_keep=16, vision_dtype="float32"))
        pruned = pipe.prepare(encoded, item.question).rows("grid")
    return item.question, {"576": full, "16": pruned}


@pytest.mark.parametrize("rows", ["576", "16"])
def test_torch_engine_matches_llamacpp_on_the_demo_model(demo_rows, rows):
    question, images = demo_rows
    logits = {}
    for backend in ("llamacpp", "torch"):
        with Engine(DEMO.files.llm, n_ctx=2048, backend=backend) as engine:
            engine.add_user_turn(question, [images[rows]])
            logits[backend] = engine.next_token_logits()
    difference = np.abs(logits["llamacpp"] - logits["torch"]).max()
    print(f"\n{rows} image rows: max |Δ logit| torch vs llama.cpp {difference:.2e}")
    assert difference < LOGIT_TOLERANCE
    assert logits["llamacpp"].argmax() == logits["torch"].argmax()


@pytest.fixture(scope="module")
def llm(tiny):
    with TorchLlama(tiny.llm, n_ctx=512, kv_f16=False) as model:
        yield model


def _next_logits(llm: TorchLlama, rows: np.ndarray, positions, bias=None) -> np.ndarray:
    """Decode rows at positions (with a bias per row), then one token after them; its logits."""
    llm.remove(0)
    llm.decode(np.asarray(positions), rows=rows, bias=None if bias is None else np.asarray(bias, np.float32))
    llm.decode(np.array([max(positions) + 1]), tokens=np.array([5]))
    return llm.logits()


def test_a_bias_of_ln2_is_two_identical_rows(llm):
    """ToMe's rule: a row with attention bias ln 2 weighs exactly like two copies of it at one position."""
    rows = np.random.default_rng(0).standard_normal((3, llm.n_embd)).astype(np.float32)
    copies = _next_logits(llm, rows[[0, 1, 1, 2]], [0, 1, 1, 2])
    biased = _next_logits(llm, rows, [0, 1, 2], bias=[0.0, math.log(2.0), 0.0])
    plain = _next_logits(llm, rows, [0, 1, 2])
    np.testing.assert_allclose(biased, copies, atol=1e-5)
    assert np.abs(plain - copies).max() > 1e-3  # the bias is what makes them equal


def test_set_bias_after_decoding_reaches_later_tokens(llm):
    """Setting a cell's bias after it was decoded changes what later tokens see, as decoding it with
    that bias did (for the later token; the rows' own pass differs, so compare the last token only
    through a single-row image)."""
    row = np.random.default_rng(1).standard_normal((1, llm.n_embd)).astype(np.float32)
    with_bias = _next_logits(llm, row, [0], bias=[1.5])
    llm.remove(0)
    llm.decode(np.array([0]), rows=row)
    llm.set_bias(0, 1, 1.5)
    llm.decode(np.array([1]), tokens=np.array([5]))
    np.testing.assert_allclose(llm.logits(), with_bias, atol=1e-5)


class _DropAfter(Hooks):
    def __init__(self, layer: int, keep: list[int]):
        super().__init__()
        self.layer, self.keep = layer, torch.tensor(keep)
        self.seen: dict[int, torch.Tensor] = {}

    def after_layer(self, layer, batch):
        self.seen[layer] = batch.x.clone()
        return batch.take(self.keep) if layer == self.layer else None


def test_rows_dropped_after_a_layer_are_gone_from_later_layers(llm):
    """Drop row 1 of 4 after layer 0: layer 1 must equal transformers' own decoder layer run on the
    three other rows (their layer-0 outputs) with a causal mask over them alone."""
    rows = np.random.default_rng(2).standard_normal((4, llm.n_embd)).astype(np.float32)
    hooks = llm.hooks = _DropAfter(0, [0, 2, 3])
    try:
        llm.remove(0)
        llm.decode(np.arange(4), rows=rows)
    finally:
        llm.hooks = Hooks()
    assert [len(c.positions) for c in llm.cache] == [4, 3]  # layer 0 kept every cell, layer 1 three
    kept = hooks.seen[0][[0, 2, 3]][None]  # (1, 3, d)
    positions = torch.tensor([[0, 2, 3]])
    rotary = LlamaRotaryEmbedding(llm.net.config)
    mask = torch.triu(torch.full((3, 3), float("-inf")), 1)[None, None]
    with torch.no_grad():
        out = llm.layers[1](kept, attention_mask=mask, position_ids=positions,
                            position_embeddings=rotary(kept, positions))
        out = out[0] if isinstance(out, tuple) else out
    np.testing.assert_allclose(hooks.seen[1].numpy(), out[0].numpy(), atol=1e-5)


def test_mass_bias_gives_the_same_logits_in_llamacpp_and_pytorch(demo_rows):
    """ln m_k on the 16 kept rows (dcp's masses): llama.cpp's per-cell bias (patch 0001) and the PyTorch
    engine's agree as closely as without the bias, and the bias moves the logits far more than that."""
    question, images = demo_rows
    rows = images["16"]
    masses = np.random.default_rng(0).integers(1, 80, len(rows.embeddings)).astype(np.float32)
    biased = ImageRows(rows.embeddings, rows.grid_index, rows.n_grid, bias=np.log(masses))
    logits = {}
    for backend in ("llamacpp", "torch"):
        for name, image in (("plain", rows), ("biased", biased)):
            with Engine(DEMO.files.llm, n_ctx=2048, backend=backend) as engine:
                engine.add_user_turn(question, [image])
                logits[backend, name] = engine.next_token_logits()
    difference = np.abs(logits["llamacpp", "biased"] - logits["torch", "biased"]).max()
    moved = np.abs(logits["llamacpp", "biased"] - logits["llamacpp", "plain"]).max()
    print(f"\nmass bias: max |Δ logit| torch vs llama.cpp {difference:.2e}; the bias moves them by {moved:.2f}")
    assert difference < LOGIT_TOLERANCE and moved > 50 * LOGIT_TOLERANCE
