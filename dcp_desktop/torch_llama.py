"""The LLM in PyTorch: a stand-in for LlamaContext that an evaluation can look inside.

Same contract as llama_context.LlamaContext (decode token ids or embedding rows at given positions into
sequence 0, read the last logits, remove cells, set their attention bias, tokenize), so the Engine runs the same
conversation on either (`Engine(..., backend="torch")`, `dcp-eval --engine torch`). The weights are the
GGUF's, dequantised to float32, in `transformers` Llama modules (export.read_llama). The forward pass is
written out here, layer by layer, because evaluations need what llama.cpp does not expose:

  - `attention bias`: a float per cached cell added to every attention logit toward it, in every layer
    and head (the rows' bias argument of decode; ln m_k for a kept token standing for m_k patches);
  - `hooks.after_layer(layer, batch)`: after a decoder layer, the hook may replace the batch that goes on
    to the later layers (in-LLM pruning: FastV, PyramidDrop, BTP; see inllm/). It may drop rows: they
    keep their keys and values in the layers they went through and are absent from every later layer.
    It may also put back rows it set aside after this same layer in an earlier decode: they go on from
    here as if they had never stopped. That is how a question decoded after the image can prune the
    image at layer L as one prefill of image + question would: the image rows stop after L, and the
    question brings back the ones it keeps (the image never attends to the question: causal mask).

Every decode counts its work in `flops`: 2 per multiply-add of the decoder layers' projections, attention
products and MLP, PyramidDrop's and BTP's count (4nd² + 2n²d + 3ndm multiply-adds for n tokens) with
the attention term for what each row may see (2·d per visible cell: a masked cell costs nothing), so
methods that keep more rows in early layers are charged for them.

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
class Batch:
    """The rows of one decode on their way through the decoder layers, as a hook sees them after a layer."""

    x: torch.Tensor  # (n, d) hidden states after the layer
    positions: torch.Tensor  # (n,) int64
    bias: torch.Tensor  # (n,) the attention bias of each row's cells
    embedded: bool  # the decode brought embedding rows (an image), not token ids
    attention: torch.Tensor | None = None  # (heads, n, t) the layer's attention probabilities, when asked for
    attended: torch.Tensor | None = None  # (t,) positions of the layer's cells, the columns of `attention`

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows: torch.Tensor) -> Batch:
        """These rows (indices, in this order), without the attention."""
        return Batch(self.x[rows], self.positions[rows], self.bias[rows], self.embedded)

    def after(self, first: Batch) -> Batch:
        """`first`'s rows, then these (a row's place in the batch does not matter: positions decide what
        it attends to; the last row gives the logits)."""
        return Batch(torch.cat([first.x, self.x]), torch.cat([first.positions, self.positions]),
                     torch.cat([first.bias, self.bias]), self.embedded)


@dataclass
class Hooks:
    """What an evaluation may do between decoder layers (see the module docstring)."""

    want_attention: set[int] = field(default_factory=set)  # layers whose attention probabilities to pass on

    def after_layer(self, layer: int, batch: Batch) -> Batch | None:
        """The batch the later layers run on (None: `batch` itself)."""
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
        self.n_layers, self.n_ff = config.num_hidden_layers, config.intermediate_size
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.kv_f16, self.takes_gaps = kv_f16, True
        self.hooks = Hooks()
        self.flops = 0  # work done by every decode so far (see the module docstring)
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
        (n,) (default 0); the logits of the last row that went through every layer are kept (none: the
        logits stay as they were)."""
        x = self.net.model.embed_tokens(torch.as_tensor(np.asarray(tokens), dtype=torch.long)) if rows is None \
            else torch.as_tensor(np.asarray(rows), dtype=torch.float32)  # (n, d)
        pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)  # (n,)
        b = torch.zeros(len(pos)) if bias is None else torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        batch = Batch(x, pos, b, embedded=rows is not None)
        for index, layer in enumerate(self.layers):
            if not len(batch):
                break
            batch = self._layer(index, layer, batch)
            edited = self.hooks.after_layer(index, batch)
            batch = batch if edited is None else edited
        if len(batch):
            self._logits = self.net.lm_head(self.net.model.norm(batch.x[-1:]))[0]

    def _layer(self, index: int, layer, batch: Batch) -> Batch:
        """One decoder layer on the batch's rows: attend to the layer's cache (which they join), MLP."""
        x, pos, n = batch.x, batch.positions, len(batch)
        h = layer.input_layernorm(x)
        attn = layer.self_attn
        q = attn.q_proj(h).view(n, self.n_heads, self.head_dim).transpose(0, 1)  # (heads, n, hd)
        k = attn.k_proj(h).view(n, self.n_kv_heads, self.head_dim).transpose(0, 1)  # (kv_heads, n, hd)
        v = attn.v_proj(h).view(n, self.n_kv_heads, self.head_dim).transpose(0, 1)
        cos, sin = self.rotary(x, pos[None])  # (1, n, hd)
        q, k = apply_rotary_pos_emb(q[None], k[None], cos, sin)
        q, k = q[0], k[0]
        cache = self._append(index, self._stored(k), self._stored(v), pos, batch.bias)
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
        self._count(n, int((~causal).sum()))
        wanted = index in self.hooks.want_attention
        return Batch(x, pos, batch.bias, batch.embedded, probs if wanted else None,
                     cache.positions if wanted else None)

    def _count(self, n: int, visible: int) -> None:
        """Add one layer's work for n rows that see `visible` cells in all (see the module docstring)."""
        projections = 2 * self.n_embd * (self.n_embd + self.n_kv_heads * self.head_dim)  # q, o and k, v
        self.flops += 2 * (n * projections + 2 * visible * self.n_embd + n * 3 * self.n_embd * self.n_ff)

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

    def cells_per_layer(self, p0: int, p1: int) -> list[int]:
        """How many cells at positions [p0, p1) each layer holds (fewer in later layers after in-LLM
        pruning)."""
        return [int(((c.positions >= p0) & (c.positions < p1)).sum()) for c in self.cache]

    @torch.inference_mode()
    def set_bias(self, p0: int, p1: int, bias: float) -> None:
        """The attention bias of the cells at positions [p0, p1), in every layer."""
        for c in self.cache:
            c.bias[(c.positions >= p0) & (c.positions < p1)] = bias
