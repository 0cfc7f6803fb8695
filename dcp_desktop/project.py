"""Stage 4 (project): LLaVA-1.5's MLP projector, in PyTorch, with weights read from the mmproj GGUF.

    kept patch features (k, width) → mm.0 (Linear) → exact GELU → mm.2 (Linear) → (k, n_embd)

The rows that come out are what the LLM reads in place of the image placeholder (stage 5, inject:
`engine.py`). Projection runs after pruning, so it costs K rows, not 576.

Also the reverse direction that text-aware pruning needs: the question's token embeddings mapped
into the vision feature space (`text_to_features`), so 576 patches never have to be projected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .gguf_file import VisionConfig, open_gguf, read_vision
from .vision import load_tensors


class Projector(torch.nn.Module):
    """LLaVA-1.5's 2-layer MLP projector. Build with `Projector.from_gguf(path)`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.mm0 = torch.nn.Linear(cfg.width, cfg.proj_hidden)
        self.mm2 = torch.nn.Linear(cfg.proj_hidden, cfg.n_embd)

    @classmethod
    def from_gguf(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        reader = open_gguf(path)
        projector = cls(read_vision(reader, Path(path)))
        plan = {}
        for ours, module in (("mm.0", projector.mm0), ("mm.2", projector.mm2)):
            plan[f"{ours}.weight"], plan[f"{ours}.bias"] = module.weight, module.bias
        load_tensors(plan, reader, Path(path))
        return projector.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.mm0.weight.device

    @torch.inference_mode()
    def project(self, features: np.ndarray) -> np.ndarray:
        """(k, width) patch features → (k, n_embd) float32 LLM embeddings."""
        x = torch.tensor(np.asarray(features), device=self.device, dtype=self.mm0.weight.dtype)  # copy: may be read-only
        return self.mm2(F.gelu(self.mm0(x))).float().cpu().numpy()

    @torch.inference_mode()
    def text_to_features(self, embeddings: np.ndarray) -> np.ndarray:
        """(t, n_embd) LLM token embeddings → (t, width) directions in the vision feature space.

        Text relevance compares image tokens with the question. Projecting all 576 tokens into the
        LLM space would cost what pruning saves, so the question comes to the tokens instead,
        through the projector's linear part: u = W0ᵀ W2ᵀ t, for which ⟨x, u⟩ = ⟨W2 W0 x, t⟩ (GELU and
        biases left out; a first-order stand-in for ⟨P(x), t⟩)."""
        t = torch.tensor(np.asarray(embeddings), device=self.device, dtype=self.mm0.weight.dtype)  # (t, n_embd)
        return ((t @ self.mm2.weight) @ self.mm0.weight).float().cpu().numpy()  # (t, width)
