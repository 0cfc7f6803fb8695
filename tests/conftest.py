"""Shared fixtures: the small random LLaVA pair (built once per session) and test images."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

import make_test_model  # noqa: E402  (models/make_test_model.py)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """The random tiny LLaVA: the transformers reference and its exported GGUF pair in one folder."""
    folder = tmp_path_factory.mktemp("tiny-llava")
    model, llm, mmproj = make_test_model.build(folder, seed=0)
    return SimpleNamespace(model=model, dir=folder, llm=llm, mmproj=mmproj)


@pytest.fixture(scope="session")
def image_path(tmp_path_factory) -> Path:
    """A 400×300 random RGB PNG (non-square, so padding runs)."""
    path = tmp_path_factory.mktemp("images") / "noise.png"
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def run_main(main, capsys, *argv) -> tuple[int, str, str]:
    """Call a command's main(argv) in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
