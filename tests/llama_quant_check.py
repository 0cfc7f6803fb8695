"""Small random llama-architecture GGUFs in each quant type the catalog uses, and a decode check.

    python tests/llama_quant_check.py OUT_DIR    # write the models, decode each: one line each, logits-*.npy

Weights are raw random blocks (valid f16 scales, random quants), as dcp_desktop/bench/random_gguf.py
writes Q4_0: decoding runs every quantised matmul kernel of the CPU variant that ggml picked, which
is what can crash (an illegal instruction kills the process, so tests run this in a subprocess).
Width 256 (one Q4_K super-block per row chunk), 2 layers; the two 64-token batches make the batched
(GEMM, repacked, AMX) kernels run, the last token the one-row (GEMV) kernels. Between batches a
bfloat16 PyTorch matmul runs, as the vision tower does in the app: its oneDNN kernels release the AMX
tiles, which killed ggml's next AMX call with SIGILL before patch 0007.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

from dcp_desktop.bench.random_gguf import LlamaShape, llm_tensors
from dcp_desktop.export import add_llama_metadata, spm_vocab

Q = gguf.GGMLQuantizationType
SHAPE = LlamaShape(n_layers=2, width=256, ff_width=512, n_heads=4, n_kv_heads=4, vocab_size=512, n_ctx=256)
TYPES = {"q4_0": Q.Q4_0, "q4_k": Q.Q4_K, "q8_0": Q.Q8_0, "f16": Q.F16}  # Q4_K_M files are mostly Q4_K
FILE_TYPES = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16}


def random_blocks(qtype, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) uint8 of random blocks whose f16 scales are all 0.01 (weights stay small)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == Q.Q4_K:  # d and dmin lead the block
        blocks[..., 0:2], blocks[..., 2:4] = scale, scale
    else:  # Q4_0, Q8_0: d leads the block
        blocks[..., 0:2] = scale
    return blocks.reshape(rows, -1)


def write_model(path: Path, name: str, seed: int = 0) -> Path:
    qtype, rng = TYPES[name], np.random.default_rng(seed)
    words = "the a is what in image colour red green blue circle square yes no".split()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(FILE_TYPES[name])
    s = SHAPE
    add_llama_metadata(writer, f"random-{name}", spm_vocab(words, size=s.vocab_size), vocab_size=s.vocab_size,
                       n_ctx=s.n_ctx, width=s.width, n_layers=s.n_layers, ff_width=s.ff_width, n_heads=s.n_heads,
                       n_kv_heads=s.n_kv_heads, rope_theta=s.rope_theta, rms_eps=s.rms_eps)
    for tensor, dims in llm_tensors(s):
        if len(dims) == 1:
            writer.add_tensor(tensor, np.ones(dims, np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(tensor, (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16))
        else:
            writer.add_tensor(tensor, random_blocks(qtype, *dims, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def other_amx_user() -> None:
    """What the app does between two prefills: PyTorch's bfloat16 vision tower, whose oneDNN kernels
    use (and release) the AMX tiles on the same threads, where the CPU has them."""
    import torch

    x = torch.ones(256, 1024, dtype=torch.bfloat16)
    torch.nn.functional.linear(x, torch.ones(1024, 1024, dtype=torch.bfloat16))


def decode_check(model_path: Path, n_prompt: int = 64, n_threads: int = 2) -> np.ndarray:
    """Load through llama_build, decode n_prompt tokens twice then one more, with PyTorch between; the
    last logits (finite)."""
    from dcp_desktop.llama_build import llama_cpp as lc

    model = lc.llama_model_load_from_file(str(model_path).encode(), lc.llama_model_default_params())
    cparams = lc.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 256, 256, n_threads, n_threads
    ctx = lc.llama_init_from_model(model, cparams)
    try:
        for start, count in ((0, n_prompt), (n_prompt, n_prompt), (2 * n_prompt, 1)):
            if start:
                other_amx_user()
            batch = lc.llama_batch_init(count, 0, 1)
            for i in range(count):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = 3 + (start + i) % 200, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == count - 1
            batch.n_tokens = count
            rc = lc.llama_decode(ctx, batch)
            lc.llama_batch_free(batch)
            if rc != 0:
                raise RuntimeError(f"{model_path}: llama_decode returned {rc}")
        n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
    finally:
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    if not np.isfinite(logits).all():
        raise RuntimeError(f"{model_path}: non-finite logits")
    return logits


def main() -> None:
    from dcp_desktop import llama_build

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    variant = llama_build.build_info()["cpu_variant"]
    for name in TYPES:
        path = out / f"random-{name}.gguf"
        if not path.exists():
            write_model(path, name)
        logits = decode_check(path)
        np.save(out / f"logits-{name}-{variant}.npy", logits)
        print(f"OK {name} variant={variant} max|logit|={np.abs(logits).max():.3f}", flush=True)


if __name__ == "__main__":
    main()
