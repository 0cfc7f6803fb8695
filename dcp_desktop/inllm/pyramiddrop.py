"""PyramidDrop (Xing et al., CVPR 2025): the LLM in stages; at the end of each, keep a fraction λ of the
image tokens left, ranked by the attention of the last instruction token at that layer (mean over heads).

Knobs: the stage ends (`pyramiddrop_layers`; PyramidDrop ends them at layers 8, 16 and 24 of 32, i.e.
after each quarter of the model). λ follows from the final budget K: (K / 576)^(1/S) (schedule.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .view import StageView, top_k


def default_layers(n_layers: int) -> tuple[int, ...]:
    """After each of the first three quarters of the layers (7, 15, 23 of 32), within the model."""
    return tuple(sorted({min(max(n_layers * j // 4 - 1, 0), n_layers - 2) for j in (1, 2, 3)}))


@dataclass(frozen=True)
class PyramidDrop:
    def select(self, view: StageView) -> np.ndarray:
        return top_k(view.last, view.budget)
