"""dcp-eval as a user runs it on the tiny random model (answers are nonsense, the numbers are not), the
JSONL path, answer matching, the paired statistics against hand computations, and the κ / accuracy-loss
rank correlation."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_main
from dcp_desktop import scenes
from dcp_desktop.eval import harness, report, stats
from dcp_desktop.eval.cli import main

RUN = ["--threads", "1", "--quiet"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    return run_main(main, capsys, *argv)


def test_report_schema_and_table(tiny, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "--model", tiny.dir, "--n", 3, "--n-questions-per-image", 2,
                             "--methods", "dcp,fastervlm,random", "--tokens", "576,64,16", "--json", report_path, *RUN)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert {"model", "split", "n", "full_accuracy", "results", "kappa_accuracy_spearman",
            "kappa_spearman_per_cell", "question_types", "vision_dtype", "engine"} <= set(report)
    assert report["split"] == "test" and report["n"] == 6 and report["n_images"] == 3
    assert report["vision_dtype"] == "float32" and report["engine"] == "llamacpp"  # dcp-eval's defaults
    cells = [(r["method"], r["tokens"]) for r in report["results"]]
    assert cells == [("full", 576), ("dcp", 64), ("fastervlm", 64), ("random", 64), ("dcp", 16), ("fastervlm", 16),
                     ("random", 16)]
    for r in report["results"]:
        assert {"method", "tokens", "accuracy", "retention", "kappa_mean", "by_type", "time_ms", "outcomes",
                "paired_vs_dcp", "retention_by_type", "retention_without_count_size"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and r["kappa_mean"] >= 0
        assert set(r["by_type"]) <= set(scenes.TYPES) and all(0 <= v <= 1 for v in r["by_type"].values())
        assert set(r["time_ms"]) == {"vision", "prune", "project", "prefill", "answer"}
        assert all(v >= 0 for v in r["time_ms"].values())
        assert r["retention"] is None if report["full_accuracy"] == 0 else r["retention"] >= 0
        assert len(r["outcomes"]) == 6 and r["accuracy"] == pytest.approx(sum(r["outcomes"]) / 6, abs=1e-3)
        assert (r["paired_vs_dcp"] is None) == (r["method"] in ("full", "dcp"))
        if r["paired_vs_dcp"]:
            dcp = next(d for d in report["results"] if (d["method"], d["tokens"]) == ("dcp", r["tokens"]))
            assert r["paired_vs_dcp"]["diff"] == pytest.approx(r["accuracy"] - dcp["accuracy"], abs=1e-3)
            low, high = r["paired_vs_dcp"]["ci95"]
            assert low <= r["paired_vs_dcp"]["diff"] <= high and 0 <= r["paired_vs_dcp"]["mcnemar_p"] <= 1
    # random averages RANDOM_SEEDS draws per question: its outcomes are thirds
    random16 = next(r for r in report["results"] if (r["method"], r["tokens"]) == ("random", 16))
    assert all(round(3 * o) == pytest.approx(3 * o, abs=1e-3) for o in random16["outcomes"])
    assert report["results"][0]["kappa_mean"] == pytest.approx(0.0, abs=1e-6)  # nothing dropped
    rho = report["kappa_accuracy_spearman"]
    assert rho is None or -1 <= rho <= 1
    assert set(report["kappa_spearman_per_cell"]["cells"]) == {"dcp@64", "fastervlm@64", "random@64", "dcp@16",
                                                               "fastervlm@16", "random@16"}
    assert "| retention | 64 tokens | 16 tokens |" in out and "| full | 576 |" in out and "| dcp | 16 |" in out
    assert "| method − dcp, accuracy points [95% CI] (McNemar p) |" in out


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


def test_spearman_gap_separates_a_predictor_from_noise():
    rng = np.random.default_rng(1)
    loss = rng.normal(size=60)
    good, noise = loss + 0.3 * rng.normal(size=60), rng.normal(size=60)
    gap, (low, high) = stats.spearman_gap(good, noise, loss, resamples=500)
    assert gap == pytest.approx(stats.spearman(good, loss) - stats.spearman(noise, loss))
    assert 0 < low < gap < high
    assert stats.spearman_gap(good, good, loss, resamples=50) == (0.0, (0.0, 0.0))  # the same predictor: no gap
    assert math.isnan(stats.spearman_gap(np.ones(60), good, loss, resamples=50)[0])  # a constant κ predicts nothing


def test_spearman_matches_scipy_on_ties():
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233 (ties share mean ranks)
    assert stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None and stats.spearman([1, 2], [1, 2]) is None


def test_mcnemar_matches_a_hand_computation():
    """b = 1 question only the reference got, c = 5 only the other: p = 2 · P(Bin(6, ½) <= 1) = 2 · 7/64."""
    reference = [1, 1, 0, 0, 0, 0, 0, 1, 0]
    other = [1, 0, 1, 1, 1, 1, 1, 1, 0]
    assert stats.mcnemar_p(reference, other) == pytest.approx(2 * 7 / 64)
    assert stats.mcnemar_p(reference, reference) == 1.0
    assert stats.mcnemar_p([1] * 10, [0] * 10) == pytest.approx(2 / 2**10)


def test_paired_bootstrap_matches_a_hand_computation():
    """The difference is the mean of other − reference; its interval holds it and shrinks with n."""
    reference, other = [1, 0, 1, 0] * 25, [1, 1, 1, 0] * 25  # other is right on 25 more of 100
    diff, (low, high) = stats.paired_difference(reference, other)
    assert diff == pytest.approx(0.25)
    # per-question differences are 25 ones and 75 zeros: bootstrap sd ≈ √(0.25 · 0.75 / 100) = 0.0433
    assert low == pytest.approx(0.25 - 1.96 * 0.0433, abs=0.015) and high == pytest.approx(0.25 + 1.96 * 0.0433, abs=0.015)
    assert stats.paired_difference(reference, reference) == (0.0, (0.0, 0.0))


def _outcome(cell, image, correct, kappa):
    return harness.Outcome(cell, image, image, "all", 0, float(correct), kappa, {})


def test_kappa_loss_correlation_per_image_and_cell():
    """Three images, full always right; the pruned cells lose accuracy exactly where κ is high."""
    full, low, high = harness.Cell("full", 576), harness.Cell("fastervlm", 64), harness.Cell("fastervlm", 16)
    by_cell = {full: [_outcome(full, i, True, 0.0) for i in range(3)],
               low: [_outcome(low, 0, True, 0.1), _outcome(low, 1, True, 0.2), _outcome(low, 2, False, 0.9)],
               high: [_outcome(high, 0, True, 0.3), _outcome(high, 1, False, 1.2), _outcome(high, 2, False, 1.5)]}
    # κ ranks 1, 2, 4, 3, 5, 6 against losses 0, 0, 1, 0, 1, 1 (tied ranks 2 and 5): 13.5 / √(17.5 · 13.5)
    assert report.kappa_loss_spearman(by_cell) == pytest.approx(13.5 / math.sqrt(17.5 * 13.5))
    # within each cell κ orders the images exactly as their losses do: ρ = 0.866 (ties in the losses)
    per_cell = report.kappa_spearman_per_cell(by_cell)
    assert per_cell["cells"] == {"fastervlm@64": pytest.approx(math.sqrt(0.75)),
                                 "fastervlm@16": pytest.approx(math.sqrt(0.75))}
    assert per_cell["median"] == pytest.approx(math.sqrt(0.75))


def test_conversation_mode_reports_follow_ups_apart(tiny, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "--model", tiny.dir, "--n", 2, "--n-questions-per-image", 3, "--conversation",
                             "--methods", "dcp", "--tokens", "16", "--json", report_path, *RUN)
    assert code == 0, err
    result = json.loads(report_path.read_text())
    assert result["conversation"] and "| first question | follow-ups |" in out
    for r in result["results"]:
        first, follow = r["first_accuracy"], r["follow_up_accuracy"]
        assert r["accuracy"] == pytest.approx((2 * first + 4 * follow) / 6)


def test_calibration_gives_every_method_the_same_number_of_trials():
    from dcp_desktop.eval import calibrate, calibration

    for method, grids in calibration.GRIDS.items():
        assert sum(len(set(values)) for values in grids.values()) == calibration.TRIALS, method


def test_calibration_tries_every_grid_value_on_validation_and_keeps_the_best(tiny, tmp_path, capsys, monkeypatch):
    from dcp_desktop.eval import calibrate, calibration

    grids = {"dcp": {"acgr_n_neighbors": (1, 2), "tau": (0.0, 0.5, 1e6)}, "cdpruner": {"cdpruner_theta": (0.0, 0.5)}}
    monkeypatch.setattr(calibration, "GRIDS", grids)  # a short search
    report_path = tmp_path / "calibration.json"
    code, out, err = run_main(calibrate.main, capsys, "--model", tiny.dir, "--n", 1, "--tokens", 16,
                              "--threads", 1, "--json", report_path)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["split"] == "validation" and report["tokens"] == [16]
    for method, knobs in grids.items():
        tried = {}
        for t in report["trials"]:
            if t["method"] == method:
                tried.setdefault(t["knob"], {})[t["value"]] = t["accuracy"]["16"]
        for knob, values in knobs.items():
            assert set(tried[knob]) == set(values)
            assert tried[knob][report["chosen"][method][knob]] == max(tried[knob].values())
    assert "| tau | 1000000.0 |" in out and "chosen:" in out


def test_in_llm_grids_follow_the_depth_and_stay_within_the_trials():
    from dcp_desktop.eval import calibrate, calibration

    for n_layers in (2, 3, 32):
        grids = calibration.inllm_grids(n_layers)
        for method, knobs in grids.items():
            assert sum(len(set(values)) for values in knobs.values()) <= calibration.TRIALS, (method, n_layers)
        assert all(0 <= layer <= n_layers - 2 for layer in grids["fastv"]["fastv_layer"])
        assert all(0 <= layer <= n_layers - 2 for stages in grids["pyramiddrop"]["pyramiddrop_layers"] for layer in stages)
    assert calibration.inllm_grids(3)["pyramiddrop"]["pyramiddrop_layers"] == ((0, 1), (0,), (1,))
    assert len(calibration.inllm_grids(3)["btp"]["btp_lambda"]) == calibration.TRIALS


def test_calibrating_in_llm_methods_needs_the_torch_engine_and_a_btp_calibration_set(tiny, capsys):
    from dcp_desktop.eval import calibrate, calibration

    code, out, err = run_main(calibrate.main, capsys, "--model", tiny.dir, "--n", 1, "--methods", "btp",
                              "--threads", 1)
    assert code == 2 and "add --engine torch" in err
    code, out, err = run_main(calibrate.main, capsys, "--model", tiny.dir, "--n", 1, "--methods", "btp",
                              "--engine", "torch", "--btp-calibration", 0, "--threads", 1)
    assert code == 2 and "BTP's calibration set is empty" in err


def test_in_llm_cells_report_image_tokens_per_layer_and_flops(tiny, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "--model", tiny.dir, "--n", 1, "--n-questions-per-image", 1, "--engine", "torch",
                             "--methods", "btp,fastv,pyramiddrop,dcp", "--tokens", "64", "--json", report_path, *RUN)
    assert code == 0, err
    results = {r["method"]: r for r in json.loads(report_path.read_text())["results"]}
    assert results["full"]["image_tokens_mean_over_layers"] == 576 and results["dcp"]["image_tokens_mean_over_layers"] == 64
    for method in ("btp", "fastv", "pyramiddrop"):  # the tiny LLM has 2 layers: all 576 in the first, 64 after
        assert results[method]["image_tokens_mean_over_layers"] == (576 + 64) / 2
    assert results["dcp"]["prefill_mflops"] < results["btp"]["prefill_mflops"] < results["full"]["prefill_mflops"]
    assert "image tokens per layer (mean) · prefill MFLOPs · prefill ms" in out


def test_ablation_pairs_cells_across_two_runs(tmp_path, capsys):
    from dcp_desktop.eval import ablation

    def write(name, outcomes):
        path = tmp_path / name
        path.write_text(json.dumps({"split": "validation", "question_types": ["count"] * 4, "results": [
            {"method": "dcp", "tokens": 16, "accuracy": sum(outcomes) / 4, "retention": sum(outcomes) / 4,
             "outcomes": outcomes}]}))
        return path

    base, other = write("off.json", [1, 0, 0, 1]), write("on.json", [1, 1, 1, 1])
    [result] = ablation.run([f"{base}:dcp@16", f"{other}:dcp@16"])
    assert result["diff"] == pytest.approx(0.5) and result["mcnemar_p"] == pytest.approx(0.5)  # b=0, c=2
    assert "| +50.0 [" in capsys.readouterr().out
    code, _, err = run_main(ablation.main, capsys, f"{base}:dcp@32", f"{other}:dcp@16")
    assert code == 2 and "no cell dcp@32; it has dcp@16" in err
    code, _, err = run_main(ablation.main, capsys, f"{base}:dcp@16", f"{other}:dcp@16", "--questions", "first")
    assert code == 2 and "--conversation" in err


def test_ablation_compares_follow_ups_alone(tiny, tmp_path, capsys):
    """Two real --conversation runs: the follow-up comparison uses exactly the follow-ups' outcomes."""
    from dcp_desktop.eval import ablation

    paths = {}
    for mode in ("keep", "reprune"):
        paths[mode] = tmp_path / f"{mode}.json"
        code, _, err = run_cli(capsys, "--model", tiny.dir, "--n", 2, "--conversation", "--methods", "cdpruner",
                               "--tokens", "16", "--follow-ups", mode, "--json", paths[mode], *RUN)
        assert code == 0, err
    report = json.loads(paths["keep"].read_text())
    assert report["turns"] == [0, 1, 2, 3] * 2 and report["follow_ups"] == "keep"
    [result] = ablation.run([f"{paths['keep']}:cdpruner@16", f"{paths['reprune']}:cdpruner@16",
                             "--questions", "follow-ups"])
    keep, reprune = ([o for o, t in zip(ablation.load_cell(f"{paths[m]}:cdpruner@16")[1]["outcomes"],
                                        report["turns"]) if t > 0] for m in ("keep", "reprune"))
    assert result["n"] == 6
    assert result["diff"] == pytest.approx(sum(reprune) / 6 - sum(keep) / 6)


def test_relevance_auc_on_hand_cases():
    from dcp_desktop.eval import relevance

    assert relevance.auc([0.1, 0.2, 0.3, 0.4], [False, False, True, True]) == 1.0
    assert relevance.auc([0.4, 0.3, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert relevance.auc([1.0, 1.0, 0.0], [True, False, False]) == 0.75  # a tie counts half
    assert relevance.auc([1.0, 2.0], [True, True]) is None


def test_relevance_finds_the_patches_of_the_named_objects():
    from dcp_desktop.eval import relevance

    scene = scenes.make_scene(12345)
    target = scene.objects[0]
    owners = scenes.patch_owners(scene).ravel()
    same = [n for n, o in enumerate(scene.objects, 1) if o.shape == target.shape and o.colour == target.colour]
    named = relevance.named_patches(f"Is there a {target.colour} {target.shape}?", scene)
    np.testing.assert_array_equal(named, np.isin(owners, same))
    plural = relevance.named_patches(f"How many {scenes.PLURALS[target.shape]} are there?", scene)
    np.testing.assert_array_equal(plural, np.isin(owners, [n for n, o in enumerate(scene.objects, 1)
                                                           if o.shape == target.shape]))
    assert relevance.named_patches("Is the image bright?", scene) is None
    assert relevance.content_words(f"Is the {target.colour} {target.shape} left?") == [target.colour, target.shape]


def test_kappa_gate_forms_and_simulated_gate():
    from dcp_desktop.eval import kappa_gate

    rng = np.random.default_rng(0)
    full = rng.standard_normal((50, 8))
    same = kappa_gate.kappa_forms(full, full, np.ones(50))
    assert all(abs(value) < 1e-6 for value in same.values())  # the full set has drifted nowhere
    one = kappa_gate.kappa_forms(full, full[:1], np.array([50.0]))
    assert one["coverage"] > 0 and one["spread"] > 1 and one["shift_spread"] == pytest.approx(one["shift"] + one["spread"])
    kappa, acgr, tatcs = np.array([0.1, 0.5, 0.9]), np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0])
    assert kappa_gate.gate_accuracy(kappa, acgr, tatcs, 0.5) == pytest.approx(2.5 / 3)  # TATCS only where κ > 0.5
    assert kappa_gate.gate_accuracy(kappa, acgr, tatcs, -np.inf) == 0.5  # always TATCS
    result = kappa_gate.analyse({"coverage": kappa, "shift": -kappa}, np.ones(3), acgr, tatcs)
    in_use, shift = result["coverage"], result["shift"]
    assert in_use["spearman_loss"] == pytest.approx(1.0) and in_use["spearman_tatcs_gain"] == pytest.approx(1.0)
    assert in_use["spearman_loss_vs_in_use"][0] == 0.0 and shift["spearman_loss_vs_in_use"][0] == pytest.approx(-2.0)
    # one τ for two budgets: the second does not care; on the first, ACGR must keep the image with κ 0.1, which
    # τ = 0.1 and τ = 0.5 both do: the tie goes to the smaller
    tau, accuracy = kappa_gate.shared_tau([(kappa, acgr, tatcs), (kappa, np.ones(3), np.ones(3))])
    assert tau == 0.1 and accuracy == pytest.approx((2.5 / 3 + 1.0) / 2)
    assert kappa_gate.shared_tau([(kappa, np.zeros(3), np.ones(3))]) == (-math.inf, 1.0)  # ties: always TATCS
