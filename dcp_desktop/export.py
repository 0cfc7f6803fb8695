"""Export a Hugging Face LLaVA-1.5 model to the standard pair of GGUF files.

The pair is what llama.cpp's LLaVA tools use and what dcp-desktop reads:
  - the LLM: a llama-architecture GGUF with its tokenizer (read by llama.cpp);
  - the mmproj: CLIP vision tower + 2-layer MLP projector (read by our PyTorch tower, and by
    llama.cpp's own multimodal path), in the key layout of llama.cpp's legacy LLaVA converter.

Only the vision blocks LLaVA uses are stored: hidden states come from the second-to-last layer, so
the last block and the post-LN are dropped and `clip.vision.block_count` is n_layers - 1.
The input is a `transformers` `LlavaForConditionalGeneration` (or its config + state dict), so the
same exporter serves the parity test's random model and the trained demo model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .errors import InputError
from .gguf_file import gguf_value, open_gguf, tensor_array

# SentencePiece token types as llama.cpp reads them (gguf.TokenType).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


@dataclass(frozen=True)
class Vocab:
    """A SentencePiece-style ("llama") vocabulary: pieces use '▁' for a leading space."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 0


def spm_vocab(words: list[str], size: int | None = None) -> Vocab:
    """Build a small real SPM vocabulary: <unk> <s> </s>, 256 byte tokens, then every prefix of
    '▁word' and 'word' for each word (so llama.cpp's bigram merger can reach whole words), plus
    single printable characters. Longer pieces score higher, so merges prefer whole words.
    `size` pads with unused pieces so the vocabulary has an exact length (the model's vocab_size)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    pieces = {chr(c) for c in range(32, 127)} | {"▁"}
    for word in words:
        for form in (word, "▁" + word):
            pieces.update(form[:n] for n in range(1, len(form) + 1))
    pieces.discard(" ")
    ordered = sorted(pieces, key=lambda p: (len(p), p))
    tokens += ordered
    types += [TOKEN_NORMAL] * len(ordered)
    if size is not None:
        if len(tokens) > size:
            raise ValueError(f"vocabulary needs {len(tokens)} pieces but the model has vocab_size {size}")
        pad = size - len(tokens)
        tokens += [f"<unused{i}>" for i in range(pad)]
        types += [TOKEN_CONTROL] * pad
    scores = [float(len(t)) if ty == TOKEN_NORMAL else 0.0 for t, ty in zip(tokens, types)]
    return Vocab(tokens=tokens, scores=scores, types=types)


def export_llava(model, vocab: Vocab, out_dir: str | Path, *, name: str = "llava",
                 dtype: str = "f32") -> tuple[Path, Path]:
    """Write `{name}.gguf` (LLM) and `mmproj-{name}.gguf` into out_dir; return both paths.

    model: a transformers LlavaForConditionalGeneration (float32 weights are read on the CPU).
    dtype: "f32" (exact, for parity) or "f16" (half the size; norms and biases stay f32).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    llm_path, mmproj_path = out_dir / f"{name}.gguf", out_dir / f"mmproj-{name}.gguf"
    write_llm(model.config.text_config, _strip(state, "model.language_model.", "lm_head."),
              vocab, llm_path, name=name, dtype=dtype)
    write_mmproj(model.config, _strip(state, "model.vision_tower.", "model.multi_modal_projector."),
                 mmproj_path, name=name, dtype=dtype)
    return llm_path, mmproj_path


def read_llava_state(config, llm_path: str | Path, mmproj_path: str | Path) -> dict[str, np.ndarray]:
    """The inverse of export_llava: the pair's tensors under the transformers names of a
    LlavaForConditionalGeneration with this config (float32; f16 files give their f16 values). What
    the export drops (the last vision block, the post-LN) is absent: load with strict=False."""
    llm, mmproj = _tensors(llm_path), _tensors(mmproj_path)
    state = {}
    for ours, theirs, heads in llm_tensor_names(config.text_config):
        value = llm(ours)
        key = theirs if theirs == "lm_head.weight" else "model.language_model." + theirs
        state[key] = _rope_unpermute(value, heads) if heads else value
    for ours, theirs in mmproj_tensor_names(config.vision_config.num_hidden_layers - 1):
        prefix = "model.multi_modal_projector." if ours.startswith("mm.") else "model.vision_tower."
        state[prefix + theirs] = mmproj(ours)
    return state


def read_llama(llm_path: str | Path):
    """A llama-architecture LLM GGUF as a transformers (LlamaConfig, float32 state dict under
    LlamaForCausalLM's names): the hyper-parameters from the metadata, the weights dequantised (any type
    `gguf` reads), Wq/Wk back in transformers' RoPE row order. For the PyTorch evaluation engine."""
    import transformers

    reader = open_gguf(llm_path)
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        raise InputError(f"{llm_path}: architecture '{arch}', expected 'llama'; the PyTorch engine runs "
                         "llama-architecture LLMs only")

    def value(key: str, default=None):
        return gguf_value(reader, f"{arch}.{key}", default)

    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = transformers.LlamaConfig(
        vocab_size=int(embd.shape[1]), hidden_size=int(value("embedding_length")),
        intermediate_size=int(value("feed_forward_length")), num_hidden_layers=int(value("block_count")),
        num_attention_heads=int(value("attention.head_count")),
        num_key_value_heads=int(value("attention.head_count_kv", value("attention.head_count"))),
        max_position_embeddings=int(value("context_length")), rms_norm_eps=float(value("attention.layer_norm_rms_epsilon")),
        rope_theta=float(value("rope.freq_base", 10000.0)), tie_word_embeddings=False)
    read = _tensors(llm_path)
    names = {t.name for t in reader.tensors}
    state = {}
    for ours, theirs, heads in llm_tensor_names(config):
        if ours == "output.weight" and ours not in names:  # tied output: llama.cpp reuses token_embd
            ours = "token_embd.weight"
        tensor = read(ours)
        key = theirs if theirs == "lm_head.weight" else "model." + theirs
        state[key] = _rope_unpermute(tensor, heads) if heads else tensor
    return config, state


def _tensors(path: str | Path):
    """name -> float32 array of the GGUF at path; a missing name is an InputError naming the file."""
    tensors = {t.name: t for t in open_gguf(path).tensors}

    def read(name: str) -> np.ndarray:
        if name not in tensors:
            raise InputError(f"{path}: tensor {name} is missing; the file does not match this model's config")
        return tensor_array(tensors[name])
    return read


def _strip(state: dict[str, np.ndarray], *prefixes: str) -> dict[str, np.ndarray]:
    """The sub-dictionary under `prefixes`, with 'model.language_model.' etc. removed
    (lm_head keeps its own name)."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                out[key if prefix == "lm_head." else key[len(prefix):]] = value
    return out


class _Writer:
    """GGUFWriter plus the one rule on tensor types: 2-D+ weights in `dtype`, the rest in f32."""

    def __init__(self, path: Path, arch: str, dtype: str):
        self.gguf = gguf.GGUFWriter(str(path), arch)
        self.half = dtype == "f16"
        self.gguf.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if self.half else gguf.LlamaFileType.ALL_F32)

    def tensor(self, name: str, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=np.float32)
        if self.half and value.ndim >= 2:
            value = value.astype(np.float16)
        self.gguf.add_tensor(name, value)

    def close(self) -> None:
        self.gguf.write_header_to_file()
        self.gguf.write_kv_data_to_file()
        self.gguf.write_tensors_to_file()
        self.gguf.close()


def _rope_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF Llama rotates the two halves of each head (rotate_half); llama.cpp's rope rotates
    adjacent pairs. Reorder the rows of Wq/Wk so both compute the same thing."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def _rope_unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of _rope_permute: llama.cpp's row order of Wq/Wk back to HF's."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def add_llama_metadata(g: gguf.GGUFWriter, name: str, vocab: Vocab, *, vocab_size: int, n_ctx: int, width: int,
                       n_layers: int, ff_width: int, n_heads: int, n_kv_heads: int, rope_theta: float,
                       rms_eps: float) -> None:
    """The llama hyper-parameters and SentencePiece tokenizer keys llama.cpp reads."""
    if len(vocab.tokens) != vocab_size:
        raise ValueError(f"vocabulary has {len(vocab.tokens)} tokens but the LLM has vocab_size {vocab_size}")
    g.add_name(name)
    g.add_context_length(n_ctx)
    g.add_embedding_length(width)
    g.add_block_count(n_layers)
    g.add_feed_forward_length(ff_width)
    g.add_head_count(n_heads)
    g.add_head_count_kv(n_kv_heads)
    g.add_rope_dimension_count(width // n_heads)
    g.add_rope_freq_base(rope_theta)
    g.add_layer_norm_rms_eps(rms_eps)
    g.add_vocab_size(vocab_size)
    g.add_tokenizer_model("llama")
    g.add_token_list(vocab.tokens)
    g.add_token_scores(vocab.scores)
    g.add_token_types(vocab.types)
    g.add_bos_token_id(vocab.bos_id)
    g.add_eos_token_id(vocab.eos_id)
    g.add_unk_token_id(vocab.unk_id)
    g.add_add_bos_token(True)
    g.add_add_eos_token(False)


def llm_tensor_names(cfg) -> list[tuple[str, str, int]]:
    """(llama.cpp name, transformers name without 'model.language_model.', heads to rope-permute or 0)
    for every LLM tensor. The one table the exporter writes by and read_llava_state reads by."""
    names = [("token_embd.weight", "embed_tokens.weight", 0)]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        names += [(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", 0),
                  (f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", cfg.num_attention_heads),
                  (f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", cfg.num_key_value_heads),
                  (f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", 0),
                  (f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", 0),
                  (f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", 0),
                  (f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", 0),
                  (f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", 0),
                  (f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", 0)]
    return names + [("output_norm.weight", "norm.weight", 0), ("output.weight", "lm_head.weight", 0)]


def mmproj_tensor_names(n_blocks: int) -> list[tuple[str, str]]:
    """(mmproj name, transformers name without 'model.vision_tower.' / 'model.multi_modal_projector.')
    for the stored vision blocks and the projector."""
    names = [("v.class_embd", "embeddings.class_embedding"),
             ("v.patch_embd.weight", "embeddings.patch_embedding.weight"),
             ("v.position_embd.weight", "embeddings.position_embedding.weight"),
             ("v.pre_ln.weight", "pre_layrnorm.weight"), ("v.pre_ln.bias", "pre_layrnorm.bias")]
    for i in range(n_blocks):
        for ours, theirs in (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                             ("attn_v", "self_attn.v_proj"), ("attn_out", "self_attn.out_proj"),
                             ("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
                             ("ffn_up", "mlp.fc1"), ("ffn_down", "mlp.fc2")):
            names += [(f"v.blk.{i}.{ours}.{kind}", f"encoder.layers.{i}.{theirs}.{kind}") for kind in ("weight", "bias")]
    for ours, theirs in (("mm.0", "linear_1"), ("mm.2", "linear_2")):
        names += [(f"{ours}.{kind}", f"{theirs}.{kind}") for kind in ("weight", "bias")]
    return names


def write_llm(cfg, state: dict[str, np.ndarray], vocab: Vocab, path: Path, *, name: str, dtype: str) -> None:
    """A llama-architecture GGUF: hyper-parameters, tokenizer, and the tensors under llama.cpp names."""
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    w = _Writer(path, "llama", dtype)
    add_llama_metadata(w.gguf, name, vocab, vocab_size=cfg.vocab_size, n_ctx=cfg.max_position_embeddings, width=cfg.hidden_size,
                       n_layers=cfg.num_hidden_layers, ff_width=cfg.intermediate_size, n_heads=n_head,
                       n_kv_heads=n_head_kv, rope_theta=float(rope_theta), rms_eps=cfg.rms_norm_eps)
    for ours, theirs, heads in llm_tensor_names(cfg):
        value = state.get(theirs, state["embed_tokens.weight"]) if ours == "output.weight" else state[theirs]
        w.tensor(ours, _rope_permute(value, heads) if heads else value)
    w.close()


def write_mmproj(cfg, state: dict[str, np.ndarray], path: Path, *, name: str, dtype: str) -> None:
    """The CLIP vision tower (blocks up to the feature layer) and the MLP projector."""
    vc = cfg.vision_config
    if cfg.vision_feature_layer != -2 or cfg.vision_feature_select_strategy != "default":
        raise ValueError("only LLaVA-1.5 feature selection is supported: vision_feature_layer -2, strategy 'default'")
    n_blocks = vc.num_hidden_layers - 1  # hidden_states[-2] is the output of block n_layers-2
    w = _Writer(path, "clip", dtype)
    g = w.gguf
    g.add_name(name)
    g.add_bool("clip.has_text_encoder", False)
    g.add_bool("clip.has_vision_encoder", True)
    g.add_bool("clip.has_llava_projector", True)
    g.add_string("clip.projector_type", "mlp")
    g.add_bool("clip.use_gelu", vc.hidden_act == "gelu")  # False: quick-GELU, as in CLIP ViT-L
    g.add_uint32("clip.vision.image_size", vc.image_size)
    g.add_uint32("clip.vision.patch_size", vc.patch_size)
    g.add_uint32("clip.vision.embedding_length", vc.hidden_size)
    g.add_uint32("clip.vision.feed_forward_length", vc.intermediate_size)
    g.add_uint32("clip.vision.projection_dim", cfg.text_config.hidden_size)
    g.add_uint32("clip.vision.block_count", n_blocks)
    g.add_uint32("clip.vision.attention.head_count", vc.num_attention_heads)
    g.add_float32("clip.vision.attention.layer_norm_epsilon", vc.layer_norm_eps)
    g.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    g.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])

    for ours, theirs in mmproj_tensor_names(n_blocks):
        w.tensor(ours, state[theirs])
    w.close()
