"""What an in-LLM method sees of the image at one stage, and the ranking every method shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StageView:
    """The image tokens still in play at one stage (candidates, in sequence order), as NumPy."""

    stage: int  # 0-based
    n_stages: int
    budget: int  # candidates to keep
    last: np.ndarray  # (N,) the prompt's last token's attention to each candidate, mean over heads
    text: np.ndarray  # (N,) the same, averaged over every prompt token after the image
    hidden: np.ndarray  # (N, d) the candidates' hidden states after this stage's layer
    grid: np.ndarray  # (N,) the patch each candidate stands for (raster index on the grid)
    grid_width: int  # patches per grid row (24)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores' indices, best first; ties go to the earlier candidate."""
    return np.argsort(-scores, kind="stable")[:k]
