"""Pure-NumPy twin of native/: every token selector, written to be read and trusted.

Tests require dcp_desktop._native to give identical indices and masses, features within float
tolerance, and the same κ. `prune` has the same signature as `_native.prune`. Inputs are assumed
valid, because dcp_desktop.prune.select checks them first.

This file is the dispatcher. The method modules mirror native/: simple.py (full, pool, fastervlm,
random: prune.cpp), baselines.py and dcp.py; common.py holds what they share (the twins of
native/prune_internal.h, and κ), and states the exactness rule both sides keep.
"""

from __future__ import annotations

import numpy as np

from . import baselines, dcp, simple
from .common import Tokens, kappa
from .simple import pool_cell_grid  # prune.select lays pool's cells out with it

SELECTORS = {"full": simple.full, "pool": simple.pool, "fastervlm": simple.fastervlm, "random": simple.random,
             "visionzip": baselines.visionzip, "divprune": baselines.divprune, "cdpruner": baselines.cdpruner,
             "acgr": dcp.acgr, "tatcs": dcp.tatcs, "dcp": dcp.dcp}


def prune(features, cls_attn, keys, masses, patch_idx, text, grid_h, grid_w, n_keep, method, seed, options):
    """Same contract as dcp_desktop._native.prune, for already-validated inputs, except that `options`
    must hold every option (prune.select passes DEFAULT_OPTIONS with the overrides applied)."""
    n = len(features)
    tokens = Tokens(
        features=features, cls_attn=cls_attn, keys=keys,
        masses=np.ones(n, np.float32) if masses is None else masses,
        patch_idx=np.arange(n, dtype=np.int32) if patch_idx is None else patch_idx,
        text=text if text is not None and len(text) else None, grid=(grid_h, grid_w))
    out = SELECTORS[method](tokens, n_keep, seed, options)
    order = np.argsort(out.rows, kind="stable")  # patch order
    rank = np.empty(len(order), np.int64)  # method-local token → output token
    rank[order] = np.arange(len(order))
    assignment = np.where(out.assignment >= 0, rank[np.maximum(out.assignment, 0)], -1).astype(np.int32)  # (n,)
    kept = np.ascontiguousarray(out.features[order], dtype=np.float32)  # (K, d)
    kept_masses = np.ascontiguousarray(out.masses[order], dtype=np.float32)  # (K,)
    k = 0.0 if method == "full" else kappa(features, masses, kept)  # full keeps every row (native prune_full)
    return (tokens.patch_idx[out.rows[order]].astype(np.int32), kept, kept_masses, k, out.used_tatcs,
            assignment)
