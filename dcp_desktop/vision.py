"""Stage 2 (vision): the CLIP ViT of a LLaVA-1.5 mmproj, in PyTorch, with weights read from the GGUF.

Follows Hugging Face LLaVA-1.5 (`modeling_clip.py` + `modeling_llava.py`):
  pixels (3, 336, 336) → patch conv (576 patches) → [CLS, p0..p575] + position embeddings 0..576
  → pre-LN → every stored block (pre-LN attention + quick-GELU MLP) → drop CLS → (576, width).
The mmproj stores only the blocks up to LLaVA's feature layer (the second-to-last), so running every
stored block gives the features LLaVA uses; there is no post-LN on that path.
The projector (stage 4) that maps kept features to LLM rows is `project.py`.

The encoder exposes what pruning needs at any layer: hidden states, keys and the [CLS]→patch
attention row (mean over heads); and it can continue the remaining blocks on a subset of tokens
(in-encoder pruning keeps CLS + the chosen tokens and runs the later blocks on those alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .gguf_file import VisionConfig, open_gguf, read_vision, tensor_array


@dataclass
class EncoderState:
    """The encoder at the end of some block. Token 0 is CLS; the rest are patches, in raster order
    unless `patch_ids` says which original patches they are (after in-encoder pruning)."""

    hidden: torch.Tensor  # (1 + n, width)
    keys: torch.Tensor  # (n, width): the last block's keys of the patch tokens (heads concatenated)
    cls_attn: torch.Tensor  # (n,): the last block's [CLS]→patch attention, mean over heads
    n_blocks_done: int

    @property
    def patches(self) -> torch.Tensor:
        return self.hidden[1:]  # (n, width)


class Block(torch.nn.Module):
    """One pre-LN CLIP encoder block."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.width
        self.n_heads, self.quick_gelu = cfg.n_heads, cfg.quick_gelu
        self.ln1 = torch.nn.LayerNorm(d, eps=cfg.eps)
        self.ln2 = torch.nn.LayerNorm(d, eps=cfg.eps)
        self.q, self.k, self.v, self.out = (torch.nn.Linear(d, d) for _ in range(4))
        self.up = torch.nn.Linear(d, cfg.ff_width)
        self.down = torch.nn.Linear(cfg.ff_width, d)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None):
        """x: (t, d) with CLS first. attn_bias: (t,) added to every query's logits (e.g. log mass).
        Returns (x_out (t, d), keys (t, d), cls_attn (t,))."""
        t, d = x.shape
        h = self.ln1(x)
        q, k, v = (proj(h).view(t, self.n_heads, -1).transpose(0, 1) for proj in (self.q, self.k, self.v))
        # (heads, t, head_dim) each
        mask = None if attn_bias is None else attn_bias.view(1, 1, t).to(q.dtype)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (heads, t, head_dim)
        x = x + self.out(attn.transpose(0, 1).reshape(t, d))
        h = self.up(self.ln2(x))
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        x = x + self.down(h)
        # The [CLS] query row alone, for pruning scores: (heads, t) → mean over heads.
        logits = (q[:, :1] @ k.transpose(1, 2)).squeeze(1) * q.shape[-1] ** -0.5
        if mask is not None:
            logits = logits + mask.view(1, t)
        cls_attn = logits.softmax(-1).mean(0)
        return x, k.transpose(0, 1).reshape(t, d), cls_attn


class VisionTower(torch.nn.Module):
    """CLIP ViT (stored blocks). Build with `VisionTower.from_gguf(path)`."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.class_embd = torch.nn.Parameter(torch.zeros(d))
        self.patch_embd = torch.nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embd = torch.nn.Parameter(torch.zeros(cfg.n_patches + 1, d))
        self.pre_ln = torch.nn.LayerNorm(d, eps=cfg.eps)
        self.blocks = torch.nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))

    @classmethod
    def from_gguf(cls, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        reader = open_gguf(path)
        cfg = read_vision(reader, Path(path))
        tower = cls(cfg)
        load_tensors(weight_plan(tower, reader), reader, Path(path))
        return tower.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.class_embd.device

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (3, S, S) normalised → (1 + n_patches, width) after pre-LN."""
        patches = self.patch_embd(pixels.unsqueeze(0)).flatten(2).squeeze(0).T  # (n_patches, d)
        x = torch.cat([self.class_embd.unsqueeze(0), patches]) + self.position_embd  # CLS first
        return self.pre_ln(x)

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int,
                   attn_bias: torch.Tensor | None = None) -> EncoderState:
        """Run blocks [start, stop) on `hidden` (1 + n, d), any n: the token set may be pruned."""
        keys = cls_attn = None
        for block in self.blocks[start:stop]:
            hidden, keys, cls_attn = block(hidden, attn_bias)
        if keys is None:
            raise ValueError(f"run_blocks: empty block range [{start}, {stop})")
        return EncoderState(hidden=hidden, keys=keys[1:], cls_attn=cls_attn[1:], n_blocks_done=stop)

    @torch.inference_mode()
    def encode(self, pixels: np.ndarray | torch.Tensor, *, stop: int | None = None) -> EncoderState:
        """Full-token encoder up to block `stop` (default: every stored block = LLaVA's features)."""
        pixels = torch.as_tensor(pixels, device=self.device, dtype=self.class_embd.dtype)
        return self.run_blocks(self.embed(pixels), 0, self.cfg.n_blocks if stop is None else stop)


VISION_DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(name: str) -> str:
    """The tower's torch device. "auto": the GPU when PyTorch has one (CUDA, then Apple's MPS), else cpu."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(name: str, device: str) -> torch.dtype:
    """The tower's compute type. "auto": bfloat16 where the hardware runs it natively (CPUs with
    AVX-512, CUDA GPUs that support it; ~2.5× faster than float32 for ViT-L on a 2-core AVX-512
    CPU), float16 on MPS, float32 otherwise."""
    if name != "auto":
        return getattr(torch, name)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.bfloat16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else torch.float32


def _ffn_pair(tensors: dict, i: int, width: int) -> tuple[str, str]:
    """Names of (up, down) for block i. The legacy converter stored fc1 as ffn_down and fc2 as
    ffn_up; llama.cpp tells them apart by shape, and so do we: up maps width → ff."""
    down_in = int(tensors[f"v.blk.{i}.ffn_down.weight"].shape[0])
    return ("ffn_up", "ffn_down") if down_in != width else ("ffn_down", "ffn_up")


def weight_plan(tower: VisionTower, reader) -> dict[str, torch.nn.Parameter]:
    """Each of the tower's parameters under its mmproj tensor name."""
    tensors, d = {t.name: t for t in reader.tensors}, tower.cfg.width
    plan = {"v.class_embd": tower.class_embd, "v.patch_embd.weight": tower.patch_embd.weight,
            "v.position_embd.weight": tower.position_embd, "v.pre_ln.weight": tower.pre_ln.weight,
            "v.pre_ln.bias": tower.pre_ln.bias}
    for i, block in enumerate(tower.blocks):
        up, down = _ffn_pair(tensors, i, d)
        for ours, module in (("attn_q", block.q), ("attn_k", block.k), ("attn_v", block.v),
                             ("attn_out", block.out), ("ln1", block.ln1), ("ln2", block.ln2),
                             (up, block.up), (down, block.down)):
            plan[f"v.blk.{i}.{ours}.weight"] = module.weight
            plan[f"v.blk.{i}.{ours}.bias"] = module.bias
    return plan


def load_tensors(plan: dict[str, torch.nn.Parameter], reader, path: Path) -> None:
    """Copy the mmproj's tensors into `plan`'s parameters, checking names and shapes (also used by
    `project.Projector`)."""
    tensors = {t.name: t for t in reader.tensors}
    with torch.no_grad():
        for name, param in plan.items():
            if name not in tensors:
                raise InputError(f"{path}: tensor {name} is missing; the mmproj is incomplete or not LLaVA-1.5")
            value = tensor_array(tensors[name])
            if value.shape != tuple(param.shape):
                raise InputError(f"{path}: tensor {name} has shape {value.shape}, expected {tuple(param.shape)}")
            param.copy_(torch.from_numpy(value))
