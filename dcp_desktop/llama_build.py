"""The project's own llama.cpp build, and the one way the package imports llama-cpp-python.

    from .llama_build import llama_cpp, mtmd

`pip install` compiles native/llama.cpp (the llama.cpp that llama-cpp-python 0.3.36's ctypes
bindings expect, plus native/llama.cpp-patches) into dcp_desktop/llama_lib/ beside the `_native`
extension. At import this module:
  1. points llama-cpp-python at that folder (LLAMA_CPP_LIB_PATH for libllama, MTMD_CPP_LIB for
     libmtmd), unless the user already set LLAMA_CPP_LIB_PATH (e.g. to a CUDA build of the same
     source): build_info() says so;
  2. imports llama_cpp and llama_cpp.mtmd_cpp;
  3. loads ggml's backends once: our build keeps each backend, and each CPU variant, in its own
     libggml-*.so (GGML_BACKEND_DL); ggml scores the CPU variants and loads the best one this CPU
     and OS can run. llama-cpp-python never does this, and a model cannot load without it;
  4. binds the patches' C functions (llama_memory_seq_set_bias) with ctypes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the bindings native/llama.cpp matches (pyproject pins it too)
SETUP_COMMAND = ('python3 -m venv .venv && CMAKE_ARGS="-DLLAMA_BUILD=OFF" '
                 '.venv/bin/pip install -c packaging/constraints.txt -e ".[dev]"')


def _our_lib_dir() -> Path:
    """dcp_desktop/llama_lib beside the installed `_native` extension. With an editable install
    compiled files live in site-packages, not in the source tree, so ask the import system."""
    spec = importlib.util.find_spec("dcp_desktop._native")
    if spec is None or spec.origin is None:
        raise ImportError("dcp-desktop's compiled parts (dcp_desktop._native, llama_lib/) are not installed; "
                          f"run the README's set-up command: {SETUP_COMMAND}")
    return Path(spec.origin).parent / "llama_lib"


def _lib_file(folder: Path, name: str) -> Path:
    suffix = ".dylib" if sys.platform == "darwin" else ".dll" if sys.platform == "win32" else ".so"
    return folder / (f"{name}.dll" if sys.platform == "win32" else f"lib{name}{suffix}")


def _choose_lib_dir() -> tuple[Path, bool]:
    """(folder llama-cpp-python will load from, whether the user chose it) and set the variables."""
    ours = _our_lib_dir()
    user = os.environ.get("LLAMA_CPP_LIB_PATH")
    if "llama_cpp.llama_cpp" in sys.modules:  # too late to choose: check what was loaded
        loaded = Path(sys.modules["llama_cpp.llama_cpp"]._lib._name).parent
        expected = Path(user) if user else ours
        if loaded.resolve() != expected.resolve():
            raise ImportError(f"llama_cpp was imported from {loaded} before dcp_desktop.llama_build could point it at "
                              f"{expected}; import dcp_desktop (or dcp_desktop.llama_build) before llama_cpp")
    if user and Path(user).resolve() != ours.resolve():
        os.environ.setdefault("MTMD_CPP_LIB", user)
        return Path(user), True
    if not _lib_file(ours, "llama").exists():
        raise ImportError(f"dcp-desktop's llama.cpp library is not built: {_lib_file(ours, 'llama')} is missing. "
                          f"Re-run the README's set-up command: {SETUP_COMMAND}")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(ours)
    os.environ["MTMD_CPP_LIB"] = str(ours)
    return ours, False


LIB_DIR, LIB_OVERRIDDEN = _choose_lib_dir()

import llama_cpp  # noqa: E402  (after the variables above: it loads its library at import)

try:
    import llama_cpp.mtmd_cpp as mtmd
except (OSError, RuntimeError):  # FileNotFoundError is an OSError
    if not LIB_OVERRIDDEN:
        raise
    mtmd = None  # the user's build has no libmtmd: llama.cpp's own multimodal path is unavailable

if llama_cpp.__version__ != LLAMA_CPP_PYTHON_VERSION:
    raise ImportError(f"llama-cpp-python {llama_cpp.__version__} is installed, but native/llama.cpp matches the "
                      f"bindings of {LLAMA_CPP_PYTHON_VERSION}; re-run the README's set-up command: {SETUP_COMMAND}")

# Every symbol through libllama's handle: dlsym on it searches libllama and then the libraries it
# links, so these are the very ggml functions libllama uses (never a second copy of libggml).
_lib = llama_cpp.llama_cpp._lib


def _bind(name: str, restype, *argtypes):
    fn = getattr(_lib, name, None)  # None: not in this library (a user's build without our patches)
    if fn is not None:
        fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


_reg_count = _bind("ggml_backend_reg_count", ctypes.c_size_t)
_reg_get = _bind("ggml_backend_reg_get", ctypes.c_void_p, ctypes.c_size_t)
_reg_name = _bind("ggml_backend_reg_name", ctypes.c_char_p, ctypes.c_void_p)
_load_all_from_path = _bind("ggml_backend_load_all_from_path", None, ctypes.c_char_p)
_load_one = _bind("ggml_backend_load", ctypes.c_void_p, ctypes.c_char_p)
_ggml_commit = _bind("ggml_commit", ctypes.c_char_p)
_seq_set_bias = _bind("llama_memory_seq_set_bias", ctypes.c_bool,
                      ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_float)


_verbose = False  # llama.cpp's and ggml's log go to stderr only when asked for (--verbose)


@llama_cpp.llama_log_callback
def _log(level: int, text: bytes, user_data) -> None:
    if _verbose:
        os.write(2, text)


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))  # before the backends load: they log too


def _load_backends() -> None:
    """Load ggml's backends from LIB_DIR once. A build with backends linked in (not GGML_BACKEND_DL)
    has them registered already; loading again would register duplicates.
    DCP_LLAMA_CPU_VARIANT=icelake (say) loads that CPU variant alone instead: for tests and benchmarks."""
    forced = os.environ.get("DCP_LLAMA_CPU_VARIANT")
    if _reg_count() == 0 and forced:
        path = _lib_file(LIB_DIR, f"ggml-cpu-{forced}")
        if not path.exists() or not _load_one(str(path).encode()):
            raise ImportError(f"DCP_LLAMA_CPU_VARIANT={forced}: cannot load {path}")
    if _reg_count() == 0:
        _load_all_from_path(str(LIB_DIR).encode())
    if _reg_count() == 0:
        raise ImportError(f"no ggml backend could be loaded from {LIB_DIR} (no libggml-cpu-*.so this CPU can run); "
                          f"re-run the README's set-up command: {SETUP_COMMAND}")


_load_backends()


def has_attention_bias() -> bool:
    """Whether the loaded libllama has llama_memory_seq_set_bias (patch 0001)."""
    return _seq_set_bias is not None


def seq_set_bias(memory, seq_id: int, p0: int, p1: int, bias: float) -> None:
    """Set the attention bias of the KV cells of `seq_id` at positions [p0, p1) (p1 < 0: to the end).

    Every query adds `bias` to its attention logit toward those cells, in every layer and head; ln m
    makes a cell weigh like m copies. The bias belongs to the cell: a K-shift (llama_memory_seq_add)
    keeps it, removing the cell resets it to 0. memory: llama_cpp.llama_get_memory(ctx)."""
    if _seq_set_bias is None:
        raise RuntimeError(f"{_lib._name} has no llama_memory_seq_set_bias (a llama.cpp build without "
                           "dcp-desktop's patches); unset LLAMA_CPP_LIB_PATH or build native/llama.cpp")
    if not _seq_set_bias(memory, seq_id, p0, p1, bias):
        raise RuntimeError("this model's memory (not a KV cache, e.g. recurrent) has no per-cell attention bias")


def backends() -> list[str]:
    """Names of the ggml backends registered now, e.g. ['CPU'] or ['CUDA', 'CPU']."""
    return [_reg_name(_reg_get(i)).decode() for i in range(_reg_count())]


def cpu_variant_scores() -> dict[str, int]:
    """ggml's score for each libggml-cpu-<variant>.so in LIB_DIR: 0 = this CPU and OS cannot run it;
    ggml loads the highest. Asks each library, as ggml itself does."""
    import _ctypes

    scores = {}
    for path in sorted(LIB_DIR.glob(_lib_file(Path(), "ggml-cpu-*").name)):
        lib = ctypes.CDLL(str(path))
        score = getattr(lib, "ggml_backend_score", None)
        if score is not None:
            score.restype = ctypes.c_int
            scores[path.stem.removeprefix("lib").removeprefix("ggml-cpu-")] = score()
        del score
        _ctypes.dlclose(lib._handle)  # unmapped again unless ggml loaded it
    return scores


def _loaded_cpu_variant() -> str | None:
    """The CPU variant ggml loaded: the one mapped into this process (Linux), else the best score."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            name = line.rsplit("/", 1)[-1]
            if name.startswith("libggml-cpu-") and str(LIB_DIR) in line:
                return name.removeprefix("libggml-cpu-").split(".")[0]
    scores = cpu_variant_scores()
    return max(scores, key=scores.get) if scores and max(scores.values()) > 0 else None


CPU_VARIANT = _loaded_cpu_variant()  # before anything else maps a variant


def build_info() -> dict:
    """What `dcp-chat doctor` reports about llama.cpp."""
    info_file = LIB_DIR / "build_info.json"
    built = json.loads(info_file.read_text()) if info_file.exists() else {}
    scores = cpu_variant_scores()
    return {
        "commit": _ggml_commit().decode() if _ggml_commit else built.get("llama_cpp_commit"),
        "patches": built.get("patches", []),
        "attention_bias": has_attention_bias(),
        "backends": backends(),
        "cpu_variant": CPU_VARIANT,
        "cpu_variant_scores": scores,
        "cpu_variant_rule": "ggml loads the variant with the highest score; 0 = the CPU or OS lacks a feature it needs",
        "gpu_backends_built": built.get("gpu_backends", []),
        "lib_path": str(LIB_DIR),
        "lib_overridden": LIB_OVERRIDDEN,
        "mtmd": mtmd is not None,
        "llama_cpp_python": llama_cpp.__version__,
        "compiler": built.get("compiler"),
    }
