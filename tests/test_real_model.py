"""The real-model tier (marked slow): a real LLaVA-1.5 GGUF pair, end to end. Nothing downloads.

Runs only when DCP_REAL_MODEL names a folder holding the pair (LLM + *mmproj*.gguf), or the LLM .gguf
with its mmproj beside it; skipped otherwise. A DCP_REAL_MODEL that names no usable pair fails, with
the same one-line message dcp-chat would print.

    DCP_REAL_MODEL=~/models/llava-1.5-7b .venv/bin/python -m pytest -m slow tests/test_real_model.py -s

`-s` prints the answer and the cosines of our image embeddings to llama.cpp's own (see README,
"Reference parity": on real LLaVA-1.5 they are not expected to match).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import run_main
from dcp_desktop import cli, gguf_file
from dcp_desktop.bench.mtmd_peer import MtmdEncoder
from dcp_desktop.engine import GenerationParams
from dcp_desktop.image import load_image, preprocess
from dcp_desktop.models import ModelFiles, resolve, validate
from dcp_desktop.pipeline import Pipeline, PipelineOptions

REAL_MODEL = os.environ.get("DCP_REAL_MODEL")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_MODEL, reason="real-model tier: set DCP_REAL_MODEL to a folder holding a real "
                                              "LLaVA-1.5 GGUF pair (LLM + mmproj), or to the LLM .gguf"),
]
QUESTION = "What colour is the circle? Answer with one word."
SHORT = GenerationParams(max_tokens=8)  # greedy


@pytest.fixture(scope="module")
def files() -> ModelFiles:
    return resolve(REAL_MODEL, None)


@pytest.fixture(scope="module")
def circle(tmp_path_factory):
    """A red disc on white, 336×336: no padding or resizing, so both encoders see the same pixels."""
    image = Image.new("RGB", (336, 336), "white")
    ImageDraw.Draw(image).ellipse((88, 88, 248, 248), fill=(220, 30, 30))
    path = tmp_path_factory.mktemp("real-model") / "circle.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def pipe(files):
    """float32 vision, so the parity figures measure the graphs, not bfloat16 rounding."""
    with Pipeline(files, PipelineOptions(vision_dtype="float32")) as pipeline:
        yield pipeline


def test_json_contract(files, circle, capsys):
    """`dcp-chat --json` on the real pair: every key the README shows, with its type."""
    code, out, err = run_main(cli.main, capsys, circle, QUESTION, "--model", REAL_MODEL, "--json",
                              "--max-tokens", SHORT.max_tokens)
    assert code == 0, err
    report = json.loads(out)
    types = {"answer": str, "model": str, "method": str, "tokens": int, "image_tokens_full": int, "kappa": float,
             "used_tatcs": bool, "acgr_layer": type(None), "timings_ms": dict, "decode_tokens_per_s": (float, type(None))}
    assert set(report) == set(types)
    assert all(isinstance(report[key], kind) for key, kind in types.items()), report
    assert (report["method"], report["tokens"], report["image_tokens_full"]) == ("dcp", 16, 576)
    assert report["answer"].strip() and report["kappa"] >= 0
    timings = report["timings_ms"]
    assert set(timings) == {"load", "vision", "prune", "project", "prefill", "first_token", "total"}
    assert all(isinstance(ms, (int, float)) and ms >= 0 for ms in timings.values()), timings


def test_the_pair_validates_and_loads(files, pipe):
    info = validate(files)
    assert info.vision == pipe.vision.cfg and info.vision.n_embd == info.n_embd
    assert info.vision.n_patches == 576  # LLaVA-1.5: a 24×24 grid of 14-pixel patches on 336 pixels


def test_a_greedy_answer_is_text_and_repeats_exactly(pipe, circle):
    answers = []
    for _ in range(2):
        pipe.new_chat()
        answers.append(pipe.ask(QUESTION, [pipe.encode_image(circle)], SHORT).text())
    print(f"\n{QUESTION!r} → {answers[0]!r}")
    assert answers[0].strip(), "empty answer"
    assert answers[1] == answers[0]


def test_vision_features_against_llamacpp_own_encoder(files, pipe, circle):
    """Our projected full-token features against mtmd's on the same mmproj and pixels. On real LLaVA-1.5
    they are not expected to match (llama.cpp's LLaVA graph puts CLS last with CLS-first positions and
    stops one block early); what is knowable is asserted, the cosines are printed."""
    if gguf_file.gguf_value(gguf_file.open_gguf(files.mmproj), gguf_file.PROJECTOR_TYPE_KEYS, None) is None:
        pytest.skip(f"{files.mmproj}: predates clip.projector_type, which llama.cpp's mtmd requires")
    cfg = pipe.vision.cfg
    image = load_image(circle)
    pixels = preprocess(image, image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std)
    ours = pipe.vision.project(pipe.vision.encode(pixels).patches.numpy())  # (576, n_embd)
    with MtmdEncoder(files.mmproj, pipe.engine.llama, n_threads=os.cpu_count() or 1) as mtmd:
        theirs = mtmd.encode(image)  # (576, n_embd)
    assert ours.shape == theirs.shape == (cfg.n_patches, cfg.n_embd)
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))  # (576,)
    print(f"\nour image embeddings vs llama.cpp mtmd, cosine per token: mean {cosine.mean():.4f}, "
          f"min {cosine.min():.4f}, max {cosine.max():.4f}")
