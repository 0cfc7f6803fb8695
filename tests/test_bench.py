"""dcp-bench prune runs and prints a well-formed report (no timing asserts), and its PyTorch peer
computes the same DCP-Prune as the native core."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dcp_desktop.bench.cli import main
from dcp_desktop.bench import prune as prune_bench
from dcp_desktop.bench import torch_dcp
from dcp_desktop.prune import DEFAULT_OPTIONS, select


def test_report_is_well_formed():
    report = prune_bench.run([("dcp", 1024, 16), ("pool", 1024, 16)], repeats=2)
    assert report["machine"]
    impls = {(r["method"], r["impl"]) for r in report["results"]}
    assert impls >= {("dcp", "native"), ("dcp", "numpy"), ("dcp", "torch"), ("pool", "native"), ("pool", "numpy")}
    for row in report["results"]:
        assert set(row) == {"method", "impl", "threads", "n", "d", "k", "median_ms"}
        assert row["median_ms"] > 0 and row["n"] == 576
    assert "| dcp | 1024 | 16 |" in prune_bench.table(report)


def test_cli_prints_json(monkeypatch, capsys):
    monkeypatch.setattr(prune_bench, "cells", lambda: [("fastervlm", 1024, 16)])
    main(["prune", "--json", "--repeats", "2"])
    report = json.loads(capsys.readouterr().out)
    assert {r["impl"] for r in report["results"]} == {"native", "numpy"}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.0, 1e9])  # TATCS path, ACGR-only path
def test_torch_peer_matches_native(seed, tau):
    x = prune_bench.inputs(64, seed=seed)
    options = {**DEFAULT_OPTIONS, "tau": tau}
    native = select(x["features"], x["cls_attn"], keys=x["keys"], text=x["text"], n_keep=16, method="dcp",
                    options={"tau": tau})
    t = {name: torch.from_numpy(value).double() for name, value in x.items()}
    rows, feats, masses, kappa, used = torch_dcp.dcp(t["features"], t["cls_attn"], t["keys"], t["text"],
                                                     24, 16, options)
    assert used == native.used_tatcs
    np.testing.assert_array_equal(rows.numpy(), native.indices)
    np.testing.assert_allclose(feats.numpy(), native.features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(masses.numpy(), native.masses, rtol=1e-5)
    assert kappa == pytest.approx(native.kappa, rel=1e-3)
