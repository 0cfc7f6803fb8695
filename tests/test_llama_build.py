"""The project's own llama.cpp build (dcp_desktop/llama_build.py, native/llama.cpp + patches).

- the library loaded is ours, with a CPU backend and the attention-bias function;
- the vendored tree still carries every patch;
- per-cell attention bias and gapped positions against a stand-alone PyTorch forward of the same
  weights (the tiny LLaVA's LLM, float32, f32 KV cache), at the llama.cpp C-API level;
- every quant type the catalog uses decodes with the CPU variant ggml picks here (in a subprocess:
  an illegal instruction would kill pytest).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import rotate_half

from dcp_desktop import llama_build
from dcp_desktop.llama_build import llama_cpp as lc

ROOT = Path(__file__).resolve().parents[1]
PATCHES = sorted((ROOT / "native" / "llama.cpp-patches").glob("[0-9]*.patch"))
# max |Δ logit| against PyTorch; the bias moves these logits by up to 2.4 (|logits| <= 2.5)
TOLERANCE = 1e-4  # float32 weights and KV cache (measured 1.8e-6 on 2026-12-02)
FA_TOLERANCE = 2e-2  # flash attention: f16 KV cache and f16 KQ mask, bias rounded to f16 (measured 3.2e-3)


class Session:
    """One llama.cpp context on a GGUF, one sequence (0), driven through the C API."""

    def __init__(self, path: Path, *, flash_attn: bool = False, n_ctx: int = 2048):
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = 2
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if not flash_attn:
            params.type_k = params.type_v = lc.GGML_TYPE_F32
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.memory = lc.llama_get_memory(self.ctx)
        self.n_embd = lc.llama_model_n_embd(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))

    def decode(self, positions, tokens=None, embd: np.ndarray | None = None) -> np.ndarray:
        """Decode one batch (token ids, or (n, n_embd) embeddings) at `positions`; last row's logits.
        Raises if llama_decode refuses the batch."""
        n = len(positions)
        batch = lc.llama_batch_init(n, self.n_embd if embd is not None else 0, 1)
        try:
            for i, p in enumerate(positions):
                batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = p, 1, 0, i == n - 1
                if embd is None:
                    batch.token[i] = tokens[i]
            if embd is not None:
                flat = np.ascontiguousarray(embd, np.float32).ravel()
                np.ctypeslib.as_array(batch.embd, shape=(flat.size,))[:] = flat
            batch.n_tokens = n
            rc = lc.llama_decode(self.ctx, batch)
        finally:
            lc.llama_batch_free(batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


class TorchLlama:
    """A stand-alone forward of the transformers Llama weights that mirrors llama.cpp's KV cache:
    each decode() is one llama_decode; keys are cached before RoPE, so a K-shift is a change of
    their positions; `bias` (one value per cached key) is added to this call's queries' attention
    logits toward the cached keys, as the KQ mask does; keys attend by position (p_key <= p_query)."""

    def __init__(self, llava):
        self.lm, self.head = llava.model.language_model, llava.lm_head
        cfg = self.lm.config
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // self.n_heads
        self.k = [torch.zeros(self.n_kv, 0, self.head_dim) for _ in self.lm.layers]  # pre-RoPE
        self.v = [torch.zeros(self.n_kv, 0, self.head_dim) for _ in self.lm.layers]
        self.pos = torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def decode(self, positions, tokens=None, embd=None, bias=None) -> np.ndarray:
        x = self.lm.embed_tokens(torch.tensor(tokens)) if embd is None else torch.from_numpy(embd).float()
        n, n_old = len(positions), len(self.pos)
        pos_q = torch.tensor(positions)
        pos_k = torch.cat([self.pos, pos_q])
        key_bias = torch.zeros(n_old + n)
        if bias is not None:
            key_bias[:n_old] = torch.as_tensor(bias, dtype=torch.float32)
        mask = torch.where(pos_k[None] <= pos_q[:, None], 0.0, -math.inf) + key_bias[None]  # (n, n_old + n)
        cos_q, sin_q = self.lm.rotary_emb(x[None], pos_q[None])
        cos_k, sin_k = self.lm.rotary_emb(x[None], pos_k[None])
        rep = self.n_heads // self.n_kv
        for i, layer in enumerate(self.lm.layers):
            att, h = layer.self_attn, layer.input_layernorm(x)
            q = att.q_proj(h).view(n, self.n_heads, self.head_dim).transpose(0, 1)  # (heads, n, d)
            self.k[i] = torch.cat([self.k[i], att.k_proj(h).view(n, self.n_kv, self.head_dim).transpose(0, 1)], 1)
            self.v[i] = torch.cat([self.v[i], att.v_proj(h).view(n, self.n_kv, self.head_dim).transpose(0, 1)], 1)
            q = q * cos_q + rotate_half(q) * sin_q
            k = (self.k[i] * cos_k + rotate_half(self.k[i]) * sin_k).repeat_interleave(rep, 0)  # (heads, keys, d)
            w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.head_dim) + mask, -1)
            o = (w @ self.v[i].repeat_interleave(rep, 0)).transpose(0, 1).reshape(n, -1)
            x = x + att.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.pos = pos_k
        return self.head(self.lm.norm(x))[-1].numpy()

    def shift(self, p0: int, delta: int) -> None:  # llama_memory_seq_add(mem, 0, p0, -1, delta)
        self.pos = torch.where(self.pos >= p0, self.pos + delta, self.pos)

    def remove_from(self, p0: int) -> None:  # llama_memory_seq_rm(mem, 0, p0, -1)
        keep = self.pos < p0
        self.pos, self.k, self.v = self.pos[keep], [k[:, keep] for k in self.k], [v[:, keep] for v in self.v]


def _tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 1000, n).tolist()


@pytest.fixture()
def session(tiny, request):
    s = Session(tiny.llm, flash_attn=getattr(request, "param", False))
    yield s
    s.close()


# --- the build ----------------------------------------------------------------------------------------

def test_our_library_is_loaded_with_cpu_backend_and_bias():
    if llama_build.LIB_OVERRIDDEN:
        pytest.skip(f"LLAMA_CPP_LIB_PATH={os.environ['LLAMA_CPP_LIB_PATH']} chooses another library")
    ours = Path(importlib.util.find_spec("dcp_desktop._native").origin).parent / "llama_lib"
    assert llama_build.LIB_DIR == ours
    assert Path(lc.llama_cpp._lib._name).parent == ours
    assert Path(lc.llama_cpp._lib._name).name.startswith("libllama")
    assert "CPU" in llama_build.backends()
    assert llama_build.has_attention_bias()
    info = llama_build.build_info()
    assert info["commit"].startswith("0c1e570")
    assert info["patches"] == [p.name for p in PATCHES]
    scores = info["cpu_variant_scores"]
    assert info["cpu_variant"] in scores and scores[info["cpu_variant"]] == max(scores.values()) > 0, info
    if Path("/proc/self/maps").exists():  # our libllama, not llama-cpp-python's own, is mapped
        maps = Path("/proc/self/maps").read_text()
        assert str(ours / "libllama.so") in maps
        assert "llama_cpp/lib/libllama" not in maps


def test_vendored_tree_carries_every_patch(tmp_path):
    """Each patch reverse-applies, last first, to a copy of native/llama.cpp."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    tree = tmp_path / "llama.cpp"
    shutil.copytree(ROOT / "native" / "llama.cpp", tree)
    assert PATCHES, "no patches found"
    for patch in reversed(PATCHES):
        result = subprocess.run(["git", "apply", "-R", str(patch)], cwd=tree, capture_output=True, text=True)
        assert result.returncode == 0, f"{patch.name} is not in native/llama.cpp: {result.stderr}"


# --- the reference --------------------------------------------------------------------------------------

def test_torch_reference_matches_transformers(tiny):
    ids = _tokens(20)
    with torch.no_grad():
        expected = tiny.model.lm_head(tiny.model.model.language_model(torch.tensor([ids])).last_hidden_state)[0, -1]
    ours = TorchLlama(tiny.model)
    ours.decode(list(range(12)), ids[:12])
    got = ours.decode(list(range(12, 20)), ids[12:])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


# --- per-cell attention bias ----------------------------------------------------------------------------

@pytest.mark.parametrize("session", [False, True], indirect=True, ids=["no-fa", "flash-attn"])
def test_bias_zero_is_bit_identical(session):
    ids = _tokens(30)
    session.decode(range(29), ids[:29])
    plain = session.decode([29], ids[29:])
    lc.llama_memory_clear(session.memory, True)
    session.decode(range(29), ids[:29])
    llama_build.seq_set_bias(session.memory, 0, 0, -1, 0.0)
    assert np.array_equal(session.decode([29], ids[29:]), plain)


@pytest.mark.parametrize("session", [False, True], indirect=True, ids=["no-fa", "flash-attn"])
def test_bias_matches_torch(tiny, session, request):
    """ln m on rows 4..9 (m = 1..40): the next token's logits match PyTorch with the same additive bias."""
    ids = _tokens(24, seed=1)
    bias = np.zeros(23, np.float32)
    bias[4:10] = np.log([3.0, 1.0, 7.0, 20.0, 40.0, 2.0])
    ref = TorchLlama(tiny.model)
    ref.decode(list(range(23)), ids[:23])
    expected = ref.decode([23], ids[23:], bias=bias)
    unbiased = TorchLlama(tiny.model)
    unbiased.decode(list(range(23)), ids[:23])
    assert np.abs(unbiased.decode([23], ids[23:]) - expected).max() > 0.05  # the bias matters here

    session.decode(range(23), ids[:23])
    for p in range(4, 10):
        llama_build.seq_set_bias(session.memory, 0, p, p + 1, float(bias[p]))
    got = session.decode([23], ids[23:])
    tolerance = FA_TOLERANCE if "flash-attn" in request.node.name else TOLERANCE
    assert np.abs(got - expected).max() < tolerance, np.abs(got - expected).max()


def test_bias_follows_k_shift_and_goes_with_seq_rm(tiny, session):
    ids = _tokens(24, seed=2)
    bias = np.zeros(23, np.float32)
    bias[2:8] = np.log(12.0)
    ref = TorchLlama(tiny.model)
    ref.decode(list(range(23)), ids[:23])
    session.decode(range(23), ids[:23])
    llama_build.seq_set_bias(session.memory, 0, 2, 8, math.log(12.0))

    # K-shift: positions 5.. move by +40 (rows 5..7 are biased and move; the bias stays on their cells)
    lc.llama_memory_seq_add(session.memory, 0, 5, -1, 40)
    ref.shift(5, 40)
    got = session.decode([63], ids[23:])
    expected = ref.decode([63], ids[23:], bias=bias)
    assert np.abs(got - expected).max() < TOLERANCE

    # seq_rm frees the cells from position 2 on: re-decoded tokens there start unbiased
    lc.llama_memory_seq_rm(session.memory, 0, 2, -1)
    ref.remove_from(2)
    session.decode(range(2, 23), ids[2:23])
    ref.decode(list(range(2, 23)), ids[2:23])
    got = session.decode([23], ids[23:])
    expected = ref.decode([23], ids[23:])
    assert np.abs(got - expected).max() < TOLERANCE


# --- gapped positions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "ln-m-bias"])
def test_image_rows_at_grid_positions_match_torch(tiny, session, with_bias):
    """The engine's recipe: prefix, K image rows at their 24x24 grid positions (gaps, one batch, the first
    one after a gap from the prefix), the question 576 positions after the image start, no K-shift."""
    rng = np.random.default_rng(3)
    prefix, question = _tokens(7, seed=4), _tokens(6, seed=5)
    grid = np.sort(rng.choice(576, 16, replace=False))  # kept patches, ascending
    rows = rng.standard_normal((16, session.n_embd)).astype(np.float32) * 0.5
    start = len(prefix)
    row_pos = (start + grid).tolist()
    q_pos = list(range(start + 576, start + 576 + len(question)))
    masses = rng.integers(1, 80, 16)
    bias = np.concatenate([np.zeros(start), np.log(masses)]).astype(np.float32) if with_bias else None

    ref = TorchLlama(tiny.model)
    ref.decode(list(range(start)), prefix)
    ref.decode(row_pos, embd=rows)
    expected = ref.decode(q_pos, question, bias=bias)

    session.decode(range(start), prefix)
    session.decode(row_pos, embd=rows)
    if with_bias:
        for p, m in zip(row_pos, masses):
            llama_build.seq_set_bias(session.memory, 0, p, p + 1, math.log(m))
    got = session.decode(q_pos, question)
    assert np.abs(got - expected).max() < TOLERANCE, np.abs(got - expected).max()


def test_positions_still_may_not_go_back(session):
    ids = _tokens(8)
    session.decode([0, 1, 2, 10], ids[:4])
    with pytest.raises(RuntimeError, match="llama_decode"):
        session.decode([10, 11], ids[4:6])  # starts at the cache's last position
    with pytest.raises(RuntimeError, match="llama_decode"):
        session.decode([20, 15], ids[4:6])  # decreases within the batch


# --- quant types on this CPU ----------------------------------------------------------------------------

def _quant_check(tmp_dir: Path, variant: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if variant:
        env["DCP_LLAMA_CPU_VARIANT"] = variant
    return subprocess.run([sys.executable, str(ROOT / "tests" / "llama_quant_check.py"), str(tmp_dir)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quant-models")
    return folder, _quant_check(folder)


def test_every_catalog_quant_type_decodes_on_this_cpu(quant_run):
    """Q4_0, Q4_K (Q4_K_M), Q8_0, f16 with the variant ggml picks here (AMX where the OS allows it)."""
    _, result = quant_run
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    ok = [line for line in result.stdout.splitlines() if line.startswith("OK ")]
    assert [line.split()[1] for line in ok] == ["q4_0", "q4_k", "q8_0", "f16"], result.stdout


def test_chosen_variant_agrees_with_the_avx2_variant(quant_run):
    """The variant ggml picks (here sapphirerapids: AMX tiles for Q4_0/Q8_0) computes what the plain
    AVX2 (haswell) kernels compute, up to float summation order."""
    folder, result = quant_run
    assert result.returncode == 0
    best = result.stdout.split("variant=")[1].split()[0]
    avx2 = _quant_check(folder, "haswell")
    assert avx2.returncode == 0, avx2.stderr[-3000:]
    for name in ("q4_0", "q4_k", "q8_0", "f16"):
        a, b = np.load(folder / f"logits-{name}-{best}.npy"), np.load(folder / f"logits-{name}-haswell.npy")
        assert np.abs(a - b).max() < 1e-2 * np.abs(b).max(), (name, best, np.abs(a - b).max(), np.abs(b).max())
