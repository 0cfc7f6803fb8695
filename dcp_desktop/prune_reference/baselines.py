"""NumPy twins of native/baselines.cpp: VisionZip, DivPrune, CDPruner. PLACEHOLDER while written."""

from __future__ import annotations


def visionzip(tokens, n_keep, seed, options):
    raise NotImplementedError("visionzip")


def divprune(tokens, n_keep, seed, options):
    raise NotImplementedError("divprune")


def cdpruner(tokens, n_keep, seed, options):
    raise NotImplementedError("cdpruner")
