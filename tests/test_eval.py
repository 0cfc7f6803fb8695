"""dcp-eval as a user runs it on the tiny random model (answers are nonsense, the numbers are not), the
JSONL path, answer matching, and the κ / accuracy-loss rank correlation."""

from __future__ import annotations

import json
import math
import sys

import pytest
from PIL import Image

from conftest import run_main
from dcp_desktop import scenes
from dcp_desktop.eval import harness
from dcp_desktop.eval.cli import main

RUN = ["--threads", "1", "--quiet"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def test_report_schema_and_table(tiny, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "--model", tiny.dir, "--n", 3, "--questions-per-image", 2,
                             "--methods", "dcp,fastervlm", "--tokens", "576,64,16", "--json", report_path, *RUN)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert {"model", "split", "n", "full_accuracy", "results", "kappa_accuracy_spearman"} <= set(report)
    assert report["split"] == "test" and report["n"] == 6 and report["n_images"] == 3
    cells = [(r["method"], r["tokens"]) for r in report["results"]]
    assert cells == [("full", 576), ("dcp", 64), ("fastervlm", 64), ("dcp", 16), ("fastervlm", 16)]
    for r in report["results"]:
        assert set(r) == {"method", "tokens", "accuracy", "retention", "kappa_mean", "by_type", "time_ms"}
        assert 0 <= r["accuracy"] <= 1 and r["kappa_mean"] >= 0
        assert set(r["by_type"]) <= set(scenes.TYPES) and all(0 <= v <= 1 for v in r["by_type"].values())
        assert set(r["time_ms"]) == {"vision", "prune", "project", "prefill", "answer"}
        assert all(v >= 0 for v in r["time_ms"].values())
        assert r["retention"] is None if report["full_accuracy"] == 0 else r["retention"] >= 0
    assert report["results"][0]["kappa_mean"] == pytest.approx(0.0, abs=1e-6)  # nothing dropped
    rho = report["kappa_accuracy_spearman"]
    assert rho is None or -1 <= rho <= 1
    assert "| retention | 64 tokens | 16 tokens |" in out and "| full | 576 |" in out and "| dcp | 16 |" in out


def test_user_jsonl_with_relative_images(tiny, tmp_path, capsys):
    items = scenes.make_split("validation", 2, 1)
    (tmp_path / "images").mkdir()
    lines = []
    for item in items:
        item.image().save(tmp_path / "images" / f"{item.image_seed}.png")
        lines.append(json.dumps({"image": f"images/{item.image_seed}.png", "question": item.question,
                                 "answer": item.answer}))
    data = tmp_path / "questions.jsonl"
    data.write_text("\n".join(lines) + "\n")
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "--model", tiny.dir, "--data", data, "--methods", "pool", "--tokens", 16,
                             "--json", report_path, *RUN)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["split"] == str(data) and report["n"] == 2 and report["n_images"] == 2
    assert [r["by_type"].keys() for r in report["results"]] == [{"all"}, {"all"}]


@pytest.mark.parametrize("budgets, expect", [("700,16", "--tokens: expected 1..576 image tokens, got 700"),
                                             ("29", "--tokens: method 'pool' lays 29 tokens out as 1×29")])
def test_a_budget_the_method_cannot_keep_fails_before_any_image(tiny, capsys, budgets, expect):
    """Budgets are checked by prune.check_n_keep (as for dcp-chat), before the first image is encoded."""
    code, _, err = run_cli(capsys, "--model", tiny.dir, "--n", 1, "--methods", "pool", "--tokens", budgets, *RUN)
    assert code == 2 and expect in err


def test_bad_data_names_the_file_and_line(tiny, tmp_path, capsys):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"image": "missing.png", "question": "Is it?", "answer": "yes"}) + "\n")
    code, _, err = run_cli(capsys, "--model", tiny.dir, "--data", data, *RUN)
    assert code == 2 and "line 1" in err and "missing.png" in err
    data.write_text('{"image": "x.png"}\n')
    code, _, err = run_cli(capsys, "--model", tiny.dir, "--data", data, *RUN)
    assert code == 2 and '"question"' in err


def test_plot_writes_a_png(tiny, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--model", tiny.dir, "--n", 1, "--methods", "dcp,pool", "--tokens", "64,16",
                           "--plot", tmp_path / "p.png", *RUN)
    assert code == 0, err
    with Image.open(tmp_path / "p.png") as png:
        assert png.format == "PNG" and png.width > 300


def test_plot_without_matplotlib_says_which_package(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when it is missing
    code, _, err = run_cli(capsys, "--model", tiny.dir, "--plot", tmp_path / "p.png", *RUN)
    assert code == 2 and "matplotlib" in err


@pytest.mark.parametrize("output,truth,same", [
    ("Yes, there is one.", "yes", True), ("No.", "no", True), ("no", "yes", False),
    ("3", "three", True), ("Three.", "3", True), ("The red one", "red one", True),
    ("two dogs", "2 dogs", True), ("a cat", "dog", False), ("Yes", "No", False)])
def test_open_answers_match_pope_gqa_style(output, truth, same):
    assert (harness.normalise_open_answer(output) == harness.normalise_open_answer(truth)) is same


def test_benchmark_answers_match_the_closed_set():
    benchmark = harness.scenes_benchmark("test", 1, 1)
    assert benchmark.normalise("It is purple.") == benchmark.normalise("purple")
    assert benchmark.normalise("3") == "three"


def test_spearman_matches_scipy_on_ties():
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233 (ties share mean ranks)
    assert harness.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert harness.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert harness.spearman([1, 1, 1], [1, 2, 3]) is None and harness.spearman([1, 2], [1, 2]) is None


def test_kappa_loss_correlation_per_image_and_cell():
    """Three images, full always right; the pruned cells lose accuracy exactly where κ is high."""
    full, low, high = harness.Cell("full", 576), harness.Cell("fastervlm", 64), harness.Cell("fastervlm", 16)

    def outcome(cell, image, correct, kappa):
        return harness.Outcome(cell, image, "all", correct, kappa, {})

    by_cell = {full: [outcome(full, i, True, 0.0) for i in range(3)],
               low: [outcome(low, 0, True, 0.1), outcome(low, 1, True, 0.2), outcome(low, 2, False, 0.9)],
               high: [outcome(high, 0, True, 0.3), outcome(high, 1, False, 1.2), outcome(high, 2, False, 1.5)]}
    # κ ranks 1, 2, 4, 3, 5, 6 against losses 0, 0, 1, 0, 1, 1 (tied ranks 2 and 5): 13.5 / √(17.5 · 13.5)
    assert harness.kappa_loss_spearman(by_cell) == pytest.approx(13.5 / math.sqrt(17.5 * 13.5))


def test_calibration_tries_every_grid_value_on_validation_and_keeps_the_best(tiny, tmp_path, capsys, monkeypatch):
    from dcp_desktop.eval import calibrate

    monkeypatch.setattr(calibrate, "GRIDS", {"acgr_n_neighbors": (1, 2), "tau": (0.0, 0.5, 1e6)})  # a short search
    report_path = tmp_path / "calibration.json"
    code, out, err = run_main(calibrate.main, capsys, "--model", tiny.dir, "--n", 1, "--tokens", 16,
                              "--threads", 1, "--json", report_path)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["split"] == "validation" and report["tokens"] == [16]
    tried = {}
    for t in report["trials"]:
        tried.setdefault(t["knob"], {})[t["value"]] = t["accuracy"]["16"]
    for knob, values in calibrate.GRIDS.items():
        assert set(tried[knob]) == set(values)
        best = max(tried[knob].values())
        assert tried[knob][report["chosen"]["prune_options"][knob]] == best
    layers = list(tried["acgr_layer"])
    assert layers[0] is None and layers[1:] == list(range(1, len(layers)))  # off, then after each block
    assert "| tau | 1000000.0 |" in out and "chosen:" in out
