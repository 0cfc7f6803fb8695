"""Random-weight LLaVA-1.5 GGUF pairs at real shapes, for speed measurements: time does not depend
on the weights' values, only on shapes and tensor types, so a 7B-shaped pair (4.4 GB) is written
in under a minute (23 s on a 2-core machine) instead of downloaded.

    build_pair(LLAVA_7B, out_dir, words)  -> (llm_path, mmproj_path)

- mmproj (f16): written by `export.write_mmproj` itself, fed from a lazy random state dict, so its
  keys and tensor names are exactly those of every model we export (our tower and llama.cpp's mtmd
  both load it). Weights are small normals, layer norms 1, biases 0: no NaN or Inf anywhere.
- LLM (Q4_0): streamed tensor by tensor (never the whole file in memory), with Q4_0 written as raw
  blocks (an f16 scale of 0.01 and random nibbles): quantising 7 B floats would take far longer.
  Keys and tensor names follow `export.write_llm`. Its SentencePiece vocabulary is real: the given
  words plus three-letter filler words up to the vocabulary size, so, like a real Llama
  vocabulary, it holds only three control tokens and the model samples ordinary pieces.
Both files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import itertools
import os
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np

from ..export import Vocab, add_llama_metadata, spm_vocab, write_mmproj

Q4_0 = gguf.GGMLQuantizationType.Q4_0
Q4_0_BLOCK, Q4_0_BYTES = gguf.GGML_QUANT_SIZES[Q4_0]  # 32 weights in 18 bytes: f16 scale + 16 bytes of nibbles
Q4_0_SCALE = 0.01  # weights (nibble - 8) * 0.01 lie in [-0.08, 0.07]
WEIGHT_STD = 0.02  # f16 tensors of the mmproj


@dataclass(frozen=True)
class LlamaShape:
    n_layers: int
    width: int
    ff_width: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    n_ctx: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * (self.width // self.n_heads)


@dataclass(frozen=True)
class ClipShape:
    width: int
    ff_width: int
    n_heads: int
    n_blocks: int  # stored blocks: LLaVA's feature layer is the second-to-last of n_blocks + 1
    proj_hidden: int  # mm.0 output width; mm.2 maps it to the LLM width
    image_size: int = 336
    patch_size: int = 14

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class PairShape:
    name: str
    llm: LlamaShape
    clip: ClipShape


# LLaVA-1.5-7B: Vicuna-7B v1.5 (llama-7B shapes) + CLIP ViT-L/14-336 with a 1024 → 4096 → 4096 projector.
LLAVA_7B = PairShape(
    "llava-1.5-7b-random",
    LlamaShape(n_layers=32, width=4096, ff_width=11008, n_heads=32, n_kv_heads=32, vocab_size=32000, n_ctx=4096),
    ClipShape(width=1024, ff_width=4096, n_heads=16, n_blocks=23, proj_hidden=4096),
)


def pair_paths(shape: PairShape, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"{shape.name}-q4_0.gguf", out_dir / f"mmproj-{shape.name}-f16.gguf"


def build_pair(shape: PairShape, out_dir: str | Path, words: list[str], *, seed: int = 0,
               progress: Callable[[int], None] = lambda n_bytes: None) -> tuple[Path, Path]:
    """Write both files into out_dir (see pair_paths); `progress` is called with bytes written."""
    llm_path, mmproj_path = pair_paths(shape, out_dir)
    llm_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _atomic(mmproj_path, lambda tmp: write_random_mmproj(shape, tmp, rng, progress))
    _atomic(llm_path, lambda tmp: write_random_llm(shape, tmp, filled_vocab(words, shape.llm.vocab_size), rng,
                                                   progress))
    return llm_path, mmproj_path


def pair_bytes(shape: PairShape) -> int:
    """About what both files take on disk (tensor data only), for the progress bar and a disk check."""
    llm = sum(_llm_bytes(dims) for _, dims in llm_tensors(shape.llm))
    mmproj = sum(int(np.prod(dims)) * (2 if len(dims) >= 2 else 4) for dims in clip_state_shapes(shape).values())
    return llm + mmproj


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)


# --- vocabulary ------------------------------------------------------------------------------------

def filled_vocab(words: list[str], size: int) -> Vocab:
    """spm_vocab(words, size) with as many three-letter filler words as fit: spm_vocab pads the
    rest with control tokens, and a vocabulary of 31 000 control tokens is nothing like Llama's."""
    fillers = ["".join(letters) for letters in itertools.product(string.ascii_lowercase, repeat=3)]
    lo, hi = 0, len(fillers)
    while lo < hi:  # the most fillers that still fit (the piece count grows with every word)
        mid = (lo + hi + 1) // 2
        if len(spm_vocab(words + fillers[:mid]).tokens) <= size:
            lo = mid
        else:
            hi = mid - 1
    return spm_vocab(words + fillers[:lo], size=size)


# --- mmproj: export.write_mmproj on a lazy random state dict ---------------------------------------

def clip_state_shapes(shape: PairShape) -> dict[str, tuple[int, ...]]:
    """Hugging Face LLaVA state-dict names (vision tower + projector) → shapes, as write_mmproj reads them."""
    c, d = shape.clip, shape.clip.width
    shapes = {"embeddings.class_embedding": (d,),
              "embeddings.patch_embedding.weight": (d, 3, c.patch_size, c.patch_size),
              "embeddings.position_embedding.weight": (c.n_patches + 1, d),
              "pre_layrnorm.weight": (d,), "pre_layrnorm.bias": (d,)}
    for i in range(c.n_blocks):
        p = f"encoder.layers.{i}."
        for name, out_dim, in_dim in (("self_attn.q_proj", d, d), ("self_attn.k_proj", d, d),
                                      ("self_attn.v_proj", d, d), ("self_attn.out_proj", d, d),
                                      ("mlp.fc1", c.ff_width, d), ("mlp.fc2", d, c.ff_width)):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (out_dim, in_dim), (out_dim,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[p + norm + ".weight"], shapes[p + norm + ".bias"] = (d,), (d,)
    for name, out_dim, in_dim in (("linear_1", c.proj_hidden, d), ("linear_2", shape.llm.width, c.proj_hidden)):
        shapes[name + ".weight"], shapes[name + ".bias"] = (out_dim, in_dim), (out_dim,)
    return shapes


class _RandomState(Mapping):
    """A state dict whose arrays are made when read (write_mmproj reads each once)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator,
                 progress: Callable[[int], None]):
        self.shapes, self.rng, self.progress = shapes, rng, progress

    def __getitem__(self, name: str) -> np.ndarray:
        dims = self.shapes[name]
        if name.endswith(".bias"):
            value = np.zeros(dims, np.float32)
        elif "norm" in name or "layrnorm" in name:
            value = np.ones(dims, np.float32)
        else:
            value = self.rng.standard_normal(dims, dtype=np.float32) * WEIGHT_STD
        self.progress(value.nbytes // 2 if value.ndim >= 2 else value.nbytes)  # 2-D+ are stored in f16
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def write_random_mmproj(shape: PairShape, path: Path, rng: np.random.Generator,
                        progress: Callable[[int], None]) -> None:
    c = shape.clip
    vision = SimpleNamespace(hidden_act="quick_gelu", image_size=c.image_size, patch_size=c.patch_size,
                             hidden_size=c.width, intermediate_size=c.ff_width, num_hidden_layers=c.n_blocks + 1,
                             num_attention_heads=c.n_heads, layer_norm_eps=1e-5)
    cfg = SimpleNamespace(vision_config=vision, text_config=SimpleNamespace(hidden_size=shape.llm.width),
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
    write_mmproj(cfg, _RandomState(clip_state_shapes(shape), rng, progress), path, name=shape.name, dtype="f16")


# --- LLM: streamed, Q4_0 as raw blocks -------------------------------------------------------------

def llm_tensors(s: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """(llama.cpp name, numpy shape) in file order, as export.write_llm writes them."""
    tensors = [("token_embd.weight", (s.vocab_size, s.width))]
    for i in range(s.n_layers):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", (s.width,)),
                    (p + "attn_q.weight", (s.width, s.width)), (p + "attn_k.weight", (s.kv_width, s.width)),
                    (p + "attn_v.weight", (s.kv_width, s.width)), (p + "attn_output.weight", (s.width, s.width)),
                    (p + "ffn_norm.weight", (s.width,)),
                    (p + "ffn_gate.weight", (s.ff_width, s.width)), (p + "ffn_up.weight", (s.ff_width, s.width)),
                    (p + "ffn_down.weight", (s.width, s.ff_width))]
    return tensors + [("output_norm.weight", (s.width,)), ("output.weight", (s.vocab_size, s.width))]


def _llm_bytes(dims: tuple[int, ...]) -> int:
    """Matrices in Q4_0, vectors (norms) in f32."""
    if len(dims) == 1:
        return dims[0] * 4
    rows, cols = dims
    return rows * (cols // Q4_0_BLOCK) * Q4_0_BYTES


def random_q4_0(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, cols) weights as Q4_0 blocks, (rows, cols/32 · 18) uint8: scale Q4_0_SCALE, random nibbles."""
    if cols % Q4_0_BLOCK:
        raise ValueError(f"Q4_0 rows must be a multiple of {Q4_0_BLOCK} wide, got {cols}")
    blocks = rng.integers(0, 256, size=(rows, cols // Q4_0_BLOCK, Q4_0_BYTES), dtype=np.uint8)
    blocks[..., :2] = np.frombuffer(np.float16(Q4_0_SCALE).tobytes(), np.uint8)  # little-endian f16 scale
    return blocks.reshape(rows, -1)


def write_random_llm(shape: PairShape, path: Path, vocab: Vocab, rng: np.random.Generator,
                     progress: Callable[[int], None]) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    _llama_metadata(writer, shape, vocab)
    tensors = llm_tensors(shape.llm)
    for name, dims in tensors:
        if len(dims) == 1:
            writer.add_tensor_info(name, dims, np.dtype(np.float32), _llm_bytes(dims))
        else:
            byte_shape = (dims[0], dims[1] // Q4_0_BLOCK * Q4_0_BYTES)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), _llm_bytes(dims), raw_dtype=Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, dims in tensors:  # same order as the infos: write_tensor_data pops them in order
        value = np.ones(dims, np.float32) if len(dims) == 1 else random_q4_0(*dims, rng)
        writer.write_tensor_data(value)
        progress(value.nbytes)
    writer.close()


def _llama_metadata(g: gguf.GGUFWriter, shape: PairShape, vocab: Vocab) -> None:
    s = shape.llm
    g.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    add_llama_metadata(g, shape.name, vocab, vocab_size=s.vocab_size, n_ctx=s.n_ctx, width=s.width, n_layers=s.n_layers,
                       ff_width=s.ff_width, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads,
                       rope_theta=s.rope_theta, rms_eps=s.rms_eps)
