"""Run an in-LLM method's stages on one image, as a hook of the PyTorch engine (torch_llama.Hooks).

The engine decodes a turn in pieces: `USER:`, then the image rows, then `\\n{question} ASSISTANT:`. In-LLM
pruning decides from the question's attention at layer L, but the image rows came first. One prefill of
image + question would run the image rows through layers ≤ L, drop the pruned ones there, and run the
kept ones through the later layers (attending to each other only). So this hook stops the image rows
after the first stage's layer L_1 (they keep their cells in layers ≤ L_1: the question attends to all of
them there) and sets them aside; when the question reaches L_1 it ranks them, and the kept ones go on
from L_1 in front of the question's rows. Later stages drop rows of that merged batch. Every layer does
exactly the work one prefill would, and gives the same logits (tests/test_inllm.py checks it).

Dropping the pruned rows' cells from the later layers' caches instead would not be enough: the kept
rows' cells in layers > L_1 + 1 were computed while they attended to the rows pruned since.

The image is the n_full rows decoded as embedding rows, from the position `start` (learnt from the first
embedding-row decode unless given). One image per turn; the question must come in one decode (≤ 512
tokens) so that its last token ranks every stage.
"""

from __future__ import annotations

import numpy as np
import torch

from ..torch_llama import Batch, Hooks
from .schedule import Schedule
from .view import StageView


class StagePruner(Hooks):
    """`method.select(view)` at each stage of `schedule` (a fresh one per turn that brings an image)."""

    def __init__(self, method, schedule: Schedule, *, n_full: int, grid_width: int, start: int | None = None):
        super().__init__(want_attention=set(schedule.layers))
        self.method, self.schedule = method, schedule
        self.n_full, self.grid_width, self.start = n_full, grid_width, start
        self.parked: Batch | None = None  # image rows set aside after the first stage's layer
        self.kept: list[np.ndarray] = []  # per stage done: the grid patches kept, ascending

    def after_layer(self, layer: int, batch: Batch) -> Batch | None:
        if layer not in self.schedule.layers:
            return None
        if self.start is None and batch.embedded:
            self.start = int(batch.positions.min())
        if self.start is None:
            return None  # no image yet (the system prompt, `USER:`)
        stage = self.schedule.layers.index(layer)
        image = (batch.positions >= self.start) & (batch.positions < self.start + self.n_full)  # (n,)
        question = batch.positions >= self.start + self.n_full  # (n,) rows that see the whole image
        if not question.any():  # the question has not come yet: set the image aside after the first stage
            return self._park(batch, image) if stage == 0 and image.any() else None
        candidates = batch.take(_rows(image))
        if stage == 0 and self.parked is not None:
            candidates = candidates.after(self.parked)  # the rows set aside come back here
        if not len(candidates):
            return None  # the image was pruned by an earlier decode: answer tokens, follow-ups
        return self._prune(stage, batch, image, question, candidates)

    def _park(self, batch: Batch, image: torch.Tensor) -> Batch:
        rows = batch.take(_rows(image))
        self.parked = rows if self.parked is None else rows.after(self.parked)
        return batch.take(_rows(~image))

    def _prune(self, stage: int, batch: Batch, image: torch.Tensor, question: torch.Tensor,
               candidates: Batch) -> Batch:
        """Keep some of `candidates` (the image rows in play) per the method; the batch's other rows stay."""
        candidates = candidates.take(torch.argsort(candidates.positions))  # sequence order
        view = self._view(stage, batch, question, candidates)
        keep = np.sort(self.method.select(view))
        self.kept.append(view.grid[keep])
        self.parked = None
        return batch.take(_rows(~image)).after(candidates.take(torch.as_tensor(keep)))

    def _view(self, stage: int, batch: Batch, question: torch.Tensor, candidates: Batch) -> StageView:
        columns = _columns(batch.attended, candidates.positions)  # (N,)
        attention = batch.attention[:, :, columns]  # (heads, n, N)
        return StageView(stage=stage, n_stages=self.schedule.n_stages, budget=self.schedule.budgets[stage],
                         last=attention[:, -1].mean(0).numpy(), text=attention[:, question].mean((0, 1)).numpy(),
                         hidden=candidates.x.numpy(), grid=(candidates.positions - self.start).numpy(),
                         grid_width=self.grid_width)


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).flatten()


def _columns(attended: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """For each position (N,), the index of the cell at that position among `attended` (t,)."""
    order = torch.argsort(attended)
    return order[torch.searchsorted(attended[order], positions)]
