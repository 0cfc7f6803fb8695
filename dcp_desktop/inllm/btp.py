"""Balanced Token Pruning (BTP; Li et al., NeurIPS 2025, arXiv 2505.22038v2): prune the image inside the LLM in
stages, early stages favouring a diverse set (what later layers will need: the global objective), late
stages the tokens the prompt attends to (the current layer's output: the local objective).

Each decision below says where it comes from: the paper (section, equation), the authors' code
(github.com/EmbodiedCity/NeurIPS2025-Balanced-Token-Pruning, llava/modeling_llama.py, read, not copied)
where the paper is silent, or the issue that asked for this (#19).

Stages and budgets
  - S stages after decoder layers L_1 < … < L_S (0-based; "after L" = the authors' "before layer L+1").
    Each keeps the same fraction α of the tokens the previous one left (§4.2, "each stage retains a
    fixed fraction"); the last keeps K, so α = (K / 576)^(1/S) (schedule.py).
  - The paper's LLaVA setting (App. 7.3) halves per stage and ends with a stage that drops every image
    token; its "128 tokens" is the mean over the 32 layers (the authors' code keeps 576/288/144/48/0 image
    tokens in layers 1–3/4–6/7–14/15–22/23–32: 129 on average; its third stage keeps a third, not half).
    Here the last stage keeps K to the last layer (#19), and the mean over layers is reported apart.
  - The stage layers come from a calibration set (§4.3): for each layer, the share of image tokens whose
    hidden state's cosine similarity before and after the layer is below τ = 0.93 (App. 7.6), averaged
    over 64 images (the paper's size; ours are the first 64 images of the validation split: the image's
    encoding does not depend on the question, causal mask, §4.1/App. 7.6). The paper prunes "immediately
    before and after major shifts in image token semantics" without a rule for "major"; ours
    (`layers_from_shifts`): a layer shifts when its share is above the mean over layers, and BTP prunes at
    every boundary between shifting and steady layers. The authors' code hard-codes LLaVA-1.5's layers.
    Without a calibration the default scales the authors' layers (after 3, 6 and 14 of 32) to the depth.

Each stage: keep k_i of the N candidates (the image tokens still in play, in sequence order)
  - Objective (eq. 7): λ_i weighs attention against diversity, rising with depth. The paper gives λ per
    stage (Table 7; every row is a straight ramp ending at 1.0: 0.6/0.8/1.0 for LLaVA-1.5). One knob here,
    `btp_lambda` = λ_1, ramped linearly to 1.0 at the last stage (one stage: λ_1); chosen on validation
    (the paper tunes λ by accuracy, Fig. 6). Eq. 7 is read as the authors' code optimises it: round(λ_i·k_i)
    tokens by attention, the rest by diversity.
  - Attention (eq. 3, §4.2): the prompt's last token's attention probabilities at the pruning layer, mean
    over heads (Table 6 chose the last token). The authors' code ranks by pre-softmax logits q·k/√d averaged
    over heads instead; the paper's equation is followed.
  - Re-balancing (eq. 8–10): over-select k' > k by attention, keep those in the first half of the
    candidates, then fill from the second half in attention order. The paper does not give k'; the
    authors' code uses 3.7×, 1.5× and 1.2× in its three stages: here 1.5× (OVERSELECT) in every stage.
    When the first half alone holds more than k of them, its k best (authors' code; eq. 9 does not say).
  - Spatial initialisation (eq. 11): a max-min set over the grid positions, Manhattan distance, greedy
    from patch 0 (authors' code; App. 7.7 finds Euclidean better, but the main results use Manhattan).
    Its size is not in the paper; the authors' code adds 144 points, half the first stage's 288, in the
    first stage only: here up to half the stage budget, first stage only, within the room the attention
    picks leave.
  - Diversity (eq. 4, DivPrune's max-min problem): the rest, greedily, each the candidate farthest (1 −
    cosine of hidden states after the pruning layer) from everything kept so far; with nothing kept yet,
    the candidate farthest from its nearest neighbour (authors' code).
  - Ties go to the earlier candidate. Kept tokens keep their positions (the authors' code gathers the
    position ids); pruning happens in the prefill only, like theirs (hook.py makes our split decodes
    behave as one prefill).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .view import StageView, top_k

OVERSELECT = 1.5  # k' / k of the re-balancing (see the module docstring)
SHIFT_COSINE = 0.93  # τ: an image token "shifts" in a layer when its cosine before/after is below this
CALIBRATION_IMAGES = 64  # the paper's calibration set size
AUTHORS_LAYERS = (3, 6, 14)  # of 32: the authors' code prunes before layers 4, 7 and 15 (1-based)


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The authors' LLaVA-1.5 stage layers scaled to this depth (when no calibration chose them)."""
    return tuple(sorted({min(max(n_layers * after // 32 - 1, 0), n_layers - 2) for after in AUTHORS_LAYERS}))


def layers_from_shifts(shift: np.ndarray) -> tuple[int, ...]:
    """Stage layers from the share of image tokens each layer shifts (n_layers,): after the last steady
    layer before a run of shifting layers, and after the last layer of such a run (§4.3). Empty when every
    layer shifts alike."""
    shifting = shift > shift.mean()
    return tuple(int(layer) for layer in range(len(shift) - 1) if shifting[layer] != shifting[layer + 1])


@dataclass(frozen=True)
class BTP:
    lam: float = 0.6  # λ_1, the first stage's attention weight (Table 7, LLaVA-1.5)

    def weight(self, stage: int, n_stages: int) -> float:
        """λ_i: from λ_1 at the first stage straight to 1.0 at the last."""
        return self.lam if n_stages == 1 else self.lam + (1.0 - self.lam) * stage / (n_stages - 1)

    def select(self, view: StageView) -> np.ndarray:
        chosen = list(rebalanced_top(view.last, round(self.weight(view.stage, view.n_stages) * view.budget)))
        if view.stage == 0:
            room = min(view.budget // 2, view.budget - len(chosen))
            chosen += spatial_spread(view.grid, view.grid_width, room, exclude=chosen)
        return max_min_fill(view.hidden, chosen, view.budget)


def rebalanced_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Eq. 8–10: k of the OVERSELECT·k best, those in the first half of the sequence first."""
    n = len(scores)
    over = top_k(scores, min(n, math.ceil(OVERSELECT * k)))
    return np.concatenate([over[over < n / 2], over[over >= n / 2]])[:k]


def spatial_spread(grid: np.ndarray, width: int, k: int, exclude: list[int]) -> list[int]:
    """Up to k candidates outside `exclude`, in the order of the greedy max-min set over their grid
    positions (Manhattan distance, from the first candidate: patch 0 in the first stage)."""
    rows, cols = grid // width, grid % width  # (N,)
    picked: list[int] = []
    taken = set(exclude)
    nearest = np.full(len(grid), np.inf)  # each candidate's distance to the spread so far
    point = 0
    while len(picked) < k and point >= 0:
        if point not in taken:
            picked.append(point)
        nearest = np.minimum(nearest, np.abs(rows - rows[point]) + np.abs(cols - cols[point]))
        nearest[point] = -1.0  # never again
        point = int(np.argmax(nearest)) if nearest.max() >= 0 else -1
    return picked


def max_min_fill(hidden: np.ndarray, chosen: list[int], k: int) -> np.ndarray:
    """`chosen`, then greedily the candidate farthest (cosine distance) from all kept so far, up to k."""
    kept = list(dict.fromkeys(int(i) for i in chosen))
    if len(kept) >= k:
        return np.asarray(kept[:k], dtype=np.int64)
    unit = torch.nn.functional.normalize(torch.as_tensor(hidden), dim=1)  # (N, d)
    # torch's product keeps to the engine's thread count; NumPy's BLAS starts its own threads, which ran
    # 10× slower on a busy 2-core machine
    distance = (1.0 - unit @ unit.T).numpy()  # (N, N)
    if not kept:
        np.fill_diagonal(distance, np.inf)
        kept = [int(np.argmax(distance.min(axis=1)))]  # the most isolated candidate
        np.fill_diagonal(distance, 0.0)
    nearest = distance[kept].min(axis=0)  # (N,) each candidate's distance to the kept set
    nearest[kept] = -np.inf
    while len(kept) < k:
        best = int(np.argmax(nearest))
        kept.append(best)
        nearest = np.minimum(nearest, distance[best])
        nearest[best] = -np.inf
    return np.asarray(kept, dtype=np.int64)
