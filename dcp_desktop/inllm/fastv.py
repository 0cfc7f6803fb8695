"""FastV (Chen et al., ECCV 2024, "An image is worth 1/2 tokens after layer 2"): once, after decoder
layer K, keep the image tokens the prompt attends to most; the later layers never see the others.

Knobs: K (`fastv_layer`, FastV's default is after the second layer) and whose attention ranks
(`fastv_query`): "last", the prompt's last token (FastV's released in-place implementation), or "text",
the mean over the question's tokens (the paper's "average attention received"; the system prompt comes
before the image and cannot attend to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .view import StageView, top_k

QUERIES = ("last", "text")


def default_layers(n_layers: int) -> tuple[int, ...]:
    return (min(1, n_layers - 2),)  # K = 2: after the second layer


@dataclass(frozen=True)
class FastV:
    query: str = "last"

    def select(self, view: StageView) -> np.ndarray:
        return top_k(view.last if self.query == "last" else view.text, view.budget)
