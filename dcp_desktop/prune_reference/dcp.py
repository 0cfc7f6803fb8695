"""NumPy twins of native/dcp.cpp: ACGR, TATCS, DCP-Prune. PLACEHOLDER while written."""

from __future__ import annotations


def acgr(tokens, n_keep, seed, options):
    raise NotImplementedError("acgr")


def tatcs(tokens, n_keep, seed, options):
    raise NotImplementedError("tatcs")


def dcp(tokens, n_keep, seed, options):
    raise NotImplementedError("dcp")
