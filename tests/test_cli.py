"""`dcp-chat` as a user runs it: the JSON report, streaming, and one clear line + exit 2 for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import make_test_model
from conftest import run_main
from dcp_desktop.cli import main

RUN = ["--max-tokens", "4", "--threads", "2"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def test_json_report(tiny, image_path, capsys):
    code, out, err = run_cli(capsys, image_path, "What is in the image?", "--model", tiny.dir,
                             "--tokens", 16, "--json", *RUN)
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"answer", "model", "method", "tokens", "image_tokens_full", "kappa", "used_tatcs",
                           "acgr_layer", "timings_ms", "decode_tokens_per_s"}
    assert report["tokens"] == 16 and report["image_tokens_full"] == 576
    assert report["method"] == "dcp" and report["kappa"] > 0 and report["acgr_layer"] is None
    assert set(report["timings_ms"]) == {"load", "vision", "prune", "project", "prefill", "first_token", "total"}
    assert all(v is None or v >= 0 for v in report["timings_ms"].values())


def test_in_encoder_acgr_reports_vision_time_saved(tiny, image_path, capsys):
    code, out, err = run_cli(capsys, image_path, "What is in the image?", "--model", tiny.dir, "--json",
                             "--acgr-layer", 1, "--prune-option", "tau=0.2", *RUN)
    assert code == 0, err
    report = json.loads(out)
    assert report["acgr_layer"] == 1 and report["timings_ms"]["vision_saved_estimate"] >= 0


def test_streams_plain_text_with_file_and_mmproj(tiny, image_path, capsys):
    code, out, err = run_cli(capsys, image_path, "What is in the image?", "--model", tiny.llm,
                             "--mmproj", tiny.mmproj, "--method", "pool", *RUN)
    assert code == 0, err
    code, json_out, err = run_cli(capsys, image_path, "What is in the image?", "--model", tiny.llm,
                                  "--mmproj", tiny.mmproj, "--method", "pool", "--json", *RUN)
    assert code == 0, err
    assert out == json.loads(json_out)["answer"] + "\n"  # the stream is the answer, then one newline


def test_console_script_runs(tiny, image_path):
    """The installed entry point, in a separate process, as a user would call it."""
    exe = Path(sys.executable).with_name("dcp-chat")  # installed beside the interpreter
    result = subprocess.run([exe, str(image_path), "What is in the image?", "--model", str(tiny.dir),
                             "--json", *RUN], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tokens"] == 16


def test_interactive_follow_ups(tiny, image_path, monkeypatch, capsys):
    lines = iter(["What is in the image?", f"/image {image_path}", "and this one?", "/new", "hello?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = run_cli(capsys, image_path, "--model", tiny.dir, *RUN)
    assert code == 0, err
    assert "image added" in err
    assert out.count("\n") == 3  # three answers


@pytest.mark.parametrize("method,note", [("cdpruner", False), ("dcp", True)])
def test_interactive_reprune(tiny, image_path, monkeypatch, capsys, method, note):
    """--follow-ups reprune in a chat; a method that reads no question says it keeps its tokens."""
    lines = iter(["What is in the image?", "and the colour?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = run_cli(capsys, image_path, "--model", tiny.dir, "--method", method, "--follow-ups", "reprune",
                             *RUN)
    assert code == 0, err
    assert out.count("\n") == 2
    assert ("follow-ups keep the first question's tokens" in err) == note


def test_interactive_bad_image_keeps_the_chat(tiny, image_path, monkeypatch, capsys, tmp_path):
    lines = iter([f"/image {tmp_path / 'missing.png'}", "still there?"])
    monkeypatch.setattr("builtins.input", _then_eof(lines))  # EOF after the lines ends the chat
    code, out, err = run_cli(capsys, image_path, "--model", tiny.dir, *RUN)
    assert code == 0
    assert "missing.png" in err and out.count("\n") == 1


def _then_eof(lines):
    def read(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None
    return read


@pytest.mark.parametrize("mode,shape,dtype", [("L", (64, 48), np.uint8), ("RGBA", (64, 48, 4), np.uint8),
                                              ("I;16", (64, 48), np.uint16)])
def test_unusual_image_modes_work(tiny, tmp_path, capsys, mode, shape, dtype):
    path = tmp_path / f"{mode.replace(';', '')}.png"
    Image.fromarray(np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)).save(path)
    code, out, err = run_cli(capsys, path, "What is in the image?", "--model", tiny.dir, *RUN)
    assert code == 0, err


# --- bad input: one line naming the culprit, exit code 2, no traceback ------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.png").write_text("this is not an image")
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    truncated = root / "truncated"
    truncated.mkdir()
    shutil.copy(tiny.mmproj, truncated / tiny.mmproj.name)
    llm_bytes = tiny.llm.read_bytes()
    (truncated / tiny.llm.name).write_bytes(llm_bytes[: len(llm_bytes) // 2])
    wide = root / "wide"
    make_test_model.build(wide, llm_width=128)  # a 128-wide LLM ...
    shutil.copy(tiny.mmproj, wide / "mmproj-tiny-llava.gguf")  # ... with the 96-wide projector
    return root


def _huge_png(path):
    """A PNG whose header claims 20000×20000 pixels (PIL refuses it before decoding)."""
    Image.new("1", (20000, 20000)).save(path, optimize=True)


@pytest.mark.parametrize("case", ["missing image", "not an image", "truncated image", "huge image",
                                  "text-only GGUF as mmproj", "width mismatch", "truncated GGUF",
                                  "K = 0", "K > 576", "K not a number", "unknown method", "bad knob",
                                  "ACGR layer out of range",
                                  "model not downloaded", "missing model file"])
def test_bad_input(case, tiny, bad_files, capsys, tmp_path):
    image, model = bad_files / "full.png", ["--model", tiny.dir]
    extra, expect = [], None
    if case == "missing image":
        image, expect = tmp_path / "nope.png", "nope.png"
    elif case == "not an image":
        image, expect = bad_files / "notes.png", "notes.png"
    elif case == "truncated image":
        image, expect = bad_files / "cut.png", "cut.png"
    elif case == "huge image":
        image, expect = tmp_path / "huge.png", "too large"
        _huge_png(image)
    elif case == "text-only GGUF as mmproj":
        model, expect = ["--model", tiny.llm, "--mmproj", tiny.llm], "not a CLIP vision projector"
    elif case == "width mismatch":
        model, expect = ["--model", bad_files / "wide"], "not a pair"
    elif case == "truncated GGUF":
        model, expect = ["--model", bad_files / "truncated"], "truncated"
    elif case == "K = 0":
        extra, expect = ["--tokens", "0"], "--tokens"
    elif case == "K > 576":
        extra, expect = ["--tokens", "577"], "1..576"
    elif case == "K not a number":
        extra, expect = ["--tokens", "many"], "--tokens"
    elif case == "unknown method":
        extra, expect = ["--method", "magic"], "--method"
    elif case == "bad knob":
        extra, expect = ["--prune-option", "tau=high"], "--prune-option"
    elif case == "ACGR layer out of range":
        extra, expect = ["--acgr-layer", "99"], "--acgr-layer"
    elif case == "model not downloaded":
        model, expect = ["--model", "llava-1.5-7b"], "dcp-chat pull llava-1.5-7b"
    elif case == "missing model file":
        model, expect = ["--model", tmp_path / "gone.gguf", "--mmproj", tiny.mmproj], "gone.gguf"
    code, out, err = run_cli(capsys, image, "What?", *model, *extra, *RUN)
    assert code == 2, (out, err)
    assert expect in err
    assert "Traceback" not in err
    assert out == ""


def test_models_lists_the_catalog(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, out, err = run_cli(capsys, "models")
    assert code == 0
    assert "llava-1.5-7b" in out and "dcp-chat pull llava-1.5-7b" in out


def test_help_teaches(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "examples:" in out and "--tokens" in out and "dcp-chat pull" in out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "dcp_desktop.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "dcp-chat" in result.stdout


def test_doctor_json_says_what_this_install_runs_on(capsys):
    code, out, err = run_main(main, capsys, "doctor", "--json")
    assert code == 0, err
    info = json.loads(out)
    llama, tensor = info["llama_cpp"], info["torch"]
    assert llama["commit"] == "0c1e570" and isinstance(llama["attention_bias"], bool)
    assert "CPU" in llama["backends"] and isinstance(llama["backends"], list)
    assert llama["cpu_variant"] in llama["cpu_variant_scores"] and llama["cpu_variant_scores"][llama["cpu_variant"]] > 0
    assert llama["cpu_variant_scores"][llama["cpu_variant"]] == max(llama["cpu_variant_scores"].values())
    assert tensor["version"] == torch.__version__ and "cpu" in tensor["devices"]
    assert tensor["vision_dtype"] in ("float32", "bfloat16", "float16")
    code, text, _ = run_main(main, capsys, "doctor")
    assert code == 0 and f"CPU variant: {llama['cpu_variant']}" in text and "attention bias" in text
