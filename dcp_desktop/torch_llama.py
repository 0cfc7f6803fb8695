"""The LLM in PyTorch: a stand-in for LlamaContext that an evaluation can look inside.

Same contract as llama_context.LlamaContext (decode token ids or embedding rows at given positions into
sequence 0, read the last logits, remove cells, set their attention bias, tokenize), so the Engine runs the same
conversation on either (`Engine(..., backend="torch")`, `dcp-eval --engine torch`). The weights are the
GGUF's, dequantised to float32, in `transformers` Llama modules (export.read_llama). The forward pass is
written out here, layer by layer, because evaluations need what llama.cpp does not expose:

  - `attention bias`: a float per cached cell added to every attention logit toward it, in every layer
    and head (the rows' bias argument of decode; ln m_k for a kept token standing for m_k patches);
  - `hooks.after_layer(layer, x, positions, attention)`: after a decoder layer, return the rows of this
    batch to keep for the later layers (in-LLM pruning: FastV, PyramidDrop, BTP). Dropped rows keep
    their keys and values in the layers they went through and are absent from every later layer.

llama.cpp keeps keys and values in f16; so does this cache (kv_f16=True), which brings its logits to
within ~1e-3 of llama.cpp's on the demo model (tests/test_torch_llama.py states the tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .export import read_llama
from .llama_context import LlamaVocab


@dataclass
class LayerCache:
    """One layer's cached cells: rotated keys and values (kv_heads, t, head_dim), their positions and
    attention biases (t,). Layers after an in-LLM drop hold fewer cells than layer 0."""

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor  # (t,) int64
    bias: torch.Tensor  # (t,) float32


@dataclass
class Hooks:
    """What an evaluation may do between decoder layers (see the module docstring)."""

    want_attention: set[int] = field(default_factory=set)  # layers whose attention probabilities to pass on

    def after_layer(self, layer: int, x: torch.Tensor, positions: torch.Tensor,
                    attention: torch.Tensor | None) -> torch.Tensor | None:
        """x (n, d) this batch's hidden states after `layer`; attention (heads, n, t) or None. Return
        the indices of the rows to keep (None: all)."""
        return None


class TorchLlama(LlamaVocab):
    """The LLM of a GGUF file in PyTorch (CPU, float32), one sequence. Not thread-safe."""

    def __init__(self, path: str | Path, *, n_ctx: int, n_threads: int | None = None, kv_f16: bool = True,
                 verbose: bool = False):
        super().__init__(path, verbose=verbose)  # llama.cpp's tokenizer, so ids match the other engine
        config, state = read_llama(path)
        config._attn_implementation = "eager"
        with torch.device("meta"):
            net = transformers.LlamaForCausalLM(config)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, assign=True)
        self.net = net.eval().requires_grad_(False)  # (self.model is llama.cpp's vocabulary handle)
        self.layers = self.net.model.layers
        self.rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
        if n_threads:
            torch.set_num_threads(n_threads)
        self.n_ctx, self.n_batch, self.n_embd = n_ctx, 512, config.hidden_size
        self.n_heads, self.n_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.kv_f16, self.takes_gaps = kv_f16, True
        self.hooks = Hooks()
        self.cache: list[LayerCache] = []
        self._logits = torch.zeros(config.vocab_size)
        self.remove(0)

    def close(self) -> None:
        self.cache = []
        super().close()

    # --- decoding ------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, positions: np.ndarray, *, tokens: np.ndarray | None = None, rows: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> None:
        """Token ids (n,) or embedding rows (n, n_embd) at `positions` (n,), each with an attention bias
        (n,) (default 0); the logits of the batch's last row are kept (if a hook dropped it: of the last
        row that went through every layer)."""
        x = self.net.model.embed_tokens(torch.as_tensor(np.asarray(tokens), dtype=torch.long)) if rows is None \
            else torch.as_tensor(np.asarray(rows), dtype=torch.float32)  # (n, d)
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)  # (n,)
        b = torch.zeros(len(pos)) if bias is None else torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        for index, layer in enumerate(self.layers):
            x, attention = self._layer(index, layer, x, pos, b)
            keep = self.hooks.after_layer(index, x, pos, attention)
            if keep is not None:
                x, pos, b = x[keep], pos[keep], b[keep]
        if len(x):
            self._logits = self.net.lm_head(self.net.model.norm(x[-1:]))[0]

    def _layer(self, index: int, layer, x: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor):
        """One decoder layer on this batch's rows: attend to the layer's cache (which they join), MLP."""
        n = len(x)
        h = layer.input_layernorm(x)
        attn = layer.self_attn
        q = attn.q_proj(h).view(n, self.n_heads, self.head_dim).transpose(0, 1)  # (heads, n, hd)
        k = attn.k_proj(h).view(n, self.n_kv_heads, self.head_dim).transpose(0, 1)  # (kv_heads, n, hd)
        v = attn.v_proj(h).view(n, self.n_kv_heads, self.head_dim).transpose(0, 1)
        cos, sin = self.rotary(x, pos[None])  # (1, n, hd)
        q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
        q, k = q[0], k[0]
        cache = self._append(index, self._stored(k), self._stored(v), pos, bias)
        group = self.n_heads // self.n_kv_heads
        keys = cache.keys.repeat_interleave(group, dim=0)  # (heads, t, hd)
        values = cache.values.repeat_interleave(group, dim=0)
        logits = q @ keys.transpose(1, 2) * self.head_dim ** -0.5  # (heads, n, t)
        causal = cache.positions[None, :] > pos[:, None]  # a row sees the cells at or before its position
        logits = logits + cache.bias[None, None, :] + torch.where(causal, float("-inf"), 0.0)[None]
        probs = logits.softmax(-1)
        out = (probs @ values).transpose(0, 1).reshape(n, -1)  # (n, d)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x, probs if index in self.hooks.want_attention else None

    def _stored(self, t: torch.Tensor) -> torch.Tensor:
        return t.half().float() if self.kv_f16 else t

    def _append(self, index: int, k, v, pos, bias) -> LayerCache:
        c = self.cache[index]
        c.keys, c.values = torch.cat([c.keys, k], 1), torch.cat([c.values, v], 1)
        c.positions, c.bias = torch.cat([c.positions, pos]), torch.cat([c.bias, bias])
        return c

    def logits(self) -> np.ndarray:
        return self._logits.float().numpy().copy()

    # --- sequence 0's memory -------------------------------------------------------------------

    @torch.inference_mode()
    def remove(self, p0: int, p1: int = -1) -> None:
        """Forget the cells at positions [p0, p1) (p1 = -1: to the end), in every layer."""
        if not self.cache:
            empty = torch.zeros(self.n_kv_heads, 0, self.head_dim)
            self.cache = [LayerCache(empty, empty, torch.zeros(0, dtype=torch.long), torch.zeros(0))
                          for _ in self.layers]
        for c in self.cache:
            gone = (c.positions >= p0) & ((c.positions < p1) if p1 >= 0 else True)
            keep = ~gone
            c.keys, c.values, c.positions, c.bias = c.keys[:, keep], c.values[:, keep], c.positions[keep], c.bias[keep]

    def position_range(self) -> tuple[int, int]:
        positions = self.cache[0].positions
        return (-1, -1) if not len(positions) else (int(positions.min()), int(positions.max()))

    @torch.inference_mode()
    def set_bias(self, p0: int, p1: int, bias: float) -> None:
        """The attention bias of the cells at positions [p0, p1), in every layer."""
        for c in self.cache:
            c.bias[(c.positions >= p0) & (c.positions < p1)] = bias
