"""dcp-bench ttft: the report is well formed end to end on the tiny model (no timing asserts), and
the random-weight GGUF writer makes files that validate, load in our tower and in llama.cpp, and
carry the requested hyper-parameters (on a scaled-down shape; the real 7B pair is 4 GB)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from dcp_desktop.bench.cli import main
from dcp_desktop.bench import random_gguf as rg
from dcp_desktop.bench import ttft
from dcp_desktop import template
from dcp_desktop.bench.mtmd_peer import MtmdEncoder
from dcp_desktop.engine import Engine
from dcp_desktop.gguf_file import gguf_value
from dcp_desktop.models import ModelFiles, validate
from dcp_desktop.vision import VisionTower

SMALL = rg.PairShape("small-random",
                     rg.LlamaShape(n_layers=2, width=256, ff_width=512, n_heads=4, n_kv_heads=2, vocab_size=1000,
                                   n_ctx=512),
                     rg.ClipShape(width=64, ff_width=128, n_heads=4, n_blocks=2, proj_hidden=256))
WORDS = (template.SYSTEM + " USER ASSISTANT What is in the image").replace(".", " ").replace(",", " ").split()


@pytest.fixture
def bench_cache(tiny, tmp_path, monkeypatch):
    """A bench cache holding the session's tiny model, so the bench does not build it again."""
    folder = tmp_path / "bench-cache"
    (folder / "tiny").mkdir(parents=True)
    for path in (tiny.llm, tiny.mmproj):
        shutil.copy(path, folder / "tiny" / path.name)
    monkeypatch.setenv("DCP_BENCH_CACHE", str(folder))
    return folder


def _check_report(report: dict, names: list[str]) -> None:
    assert report["shapes"] == "tiny" and report["threads"] >= 1 and report["machine"]
    assert [r["config"] for r in report["results"]] == names
    kv_per_row = 2 * 2 * 2 * 24 * 2  # tiny LLM: layers × (K, V) × kv heads × head dim × f16
    for r in report["results"]:
        assert set(r) >= {"config", *ttft.FIELDS, "peak_rss_mb", "kv_bytes_image"}
        ours = r["config"] != "llamacpp-576"
        for field in ("vision_ms", "prefill_ms", "ttft_ms", "decode_tokens_per_s", "peak_rss_mb", "load_ms"):
            assert r[field] > 0, (r["config"], field)
        for field in ("prune_ms", "project_ms"):
            assert (r[field] > 0) if ours else (r[field] is None), (r["config"], field)
        assert r["kv_bytes_image"] == r["n_image_tokens"] * kv_per_row
        extra = r["kv_bytes_image_llamacpp"] - r["kv_bytes_image"]  # llama.cpp's cell metadata
        assert 0 <= extra <= 64 * r["n_image_tokens"], r
    fit = report["context_fit"]["images"]
    assert fit["16"] > fit["576"] >= 1


def test_cli_json_every_config(bench_cache, capsys):
    main(["ttft", "--shapes", "tiny", "--runs", "1", "--json", "--multi-image", "3"])
    report = json.loads(capsys.readouterr().out)
    _check_report(report, [c.name for c in ttft.CONFIGS])
    multi = report["multi_image"]
    assert multi["ok"] and multi["images_done"] == 3
    assert 3 * ttft.MULTI_IMAGE_TOKENS < multi["kv_positions"] <= multi["n_ctx"]
    text = ttft.table(report)
    assert "| dcp-16-inencoder | 16 |" in text and "cached in BOTH paths" in text and "images at 16 tokens" in text


def test_context_fit_arithmetic():
    fit = ttft.context_fit({"prefix": 40, "turn_text": 15}, kv_per_row=100)
    per_turn = 15 + ttft.DECODE_TOKENS + 1  # question text + answer + </s>
    assert fit["images"] == {"576": (4096 - 40) // (576 + per_turn), "16": (4096 - 40) // (16 + per_turn)}
    assert fit["kv_bytes_per_image"] == {"576": 57600, "16": 1600}
    full_turn, packed_turn = 576 + per_turn, 16 + per_turn
    spread = (4096 - 40) // full_turn  # images at their 576 positions, then packed ones in what is left
    assert fit["images_grid"] == {"576": fit["images"]["576"],
                                  "16": spread + (4096 - 40 - spread * full_turn) // packed_turn}


def test_7b_shape_has_llama_7b_parameter_count():
    tensors = rg.llm_tensors(rg.LLAVA_7B.llm)
    assert sum(int(np.prod(dims)) for _, dims in tensors) == 6_738_415_616  # LLaMA-7B / Vicuna-7B
    assert len(tensors) == 3 + 9 * 32
    clip = rg.clip_state_shapes(rg.LLAVA_7B)
    assert clip["encoder.layers.22.mlp.fc1.weight"] == (4096, 1024) and "encoder.layers.23.mlp.fc1.weight" not in clip
    assert clip["embeddings.position_embedding.weight"] == (577, 1024) and clip["linear_2.weight"] == (4096, 4096)


def test_q4_0_blocks_dequantise_to_small_finite_weights():
    blocks = rg.random_q4_0(3, 64, np.random.default_rng(0))  # (3, 2 blocks · 18 bytes)
    levels = dequantize(blocks, GGMLQuantizationType.Q4_0).reshape(3, 64) / np.float16(rg.Q4_0_SCALE)
    np.testing.assert_array_equal(levels, np.round(levels))  # scale first, then nibbles: (q - 8) · scale
    assert levels.min() >= -8 and levels.max() <= 7 and len(np.unique(levels)) > 8


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    return rg.build_pair(SMALL, tmp_path_factory.mktemp("random-gguf"), WORDS)


def test_random_pair_validates_with_requested_hyper_parameters(small_pair):
    llm, mmproj = small_pair
    assert not list(llm.parent.glob("*.partial"))
    info = validate(ModelFiles("small", llm, mmproj))
    assert (info.n_embd, info.n_ctx_train) == (256, 512)
    vision = info.vision
    assert {k: getattr(vision, k) for k in ("image_size", "patch_size", "width", "ff_width", "n_blocks", "n_heads")} == {
        "image_size": 336, "patch_size": 14, "width": 64, "ff_width": 128, "n_blocks": 2, "n_heads": 4}
    reader = GGUFReader(llm)
    values = {key: gguf_value(reader, f"llama.{key}") for key in (
        "block_count", "embedding_length", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "context_length", "vocab_size")}
    assert values == {"block_count": 2, "embedding_length": 256, "feed_forward_length": 512,
                      "attention.head_count": 4, "attention.head_count_kv": 2, "context_length": 512,
                      "vocab_size": 1000}
    assert len(gguf_value(reader, "tokenizer.ggml.tokens")) == 1000
    stored = {t.name: (tuple(int(n) for n in reversed(t.shape)), t.tensor_type) for t in reader.tensors}
    expected = {name: (dims, GGMLQuantizationType.Q4_0 if len(dims) == 2 else GGMLQuantizationType.F32)
                for name, dims in rg.llm_tensors(SMALL.llm)}
    assert stored == expected


def test_random_pair_loads_in_our_tower_and_llama_cpp(small_pair):
    llm, mmproj = small_pair
    cfg = VisionTower.from_gguf(mmproj).cfg
    assert (cfg.width, cfg.n_blocks, cfg.proj_hidden, cfg.n_embd) == (64, 2, 256, 256)
    with Engine(str(llm), n_ctx=512, n_threads=1) as engine:
        assert engine.llama.n_vocab == 1000 and engine.n_prefix > 10
        assert len(engine.tokenize("What is in the image?")) <= 8  # whole-word pieces
        assert np.isfinite(engine.next_token_logits()).all()
        with MtmdEncoder(str(mmproj), engine.llama) as encoder:  # llama.cpp's own loader accepts the mmproj
            assert encoder.n_embd == 256
