"""What the bundle holds and leaves out, on every platform. The PyInstaller specs import it:
packaging/dcp-desktop.spec (Linux), packaging/macos/dcp-desktop-macos.spec and
packaging/windows/dcp-desktop-windows.spec. Runs inside PyInstaller, in the build venv.

The bundle carries, besides what PyInstaller finds by following imports:
  dcp_desktop/llama_lib/   our llama.cpp: libllama, libmtmd, libggml*, and every ggml backend module
                           (libggml-cpu-<variant>, ggml-cuda, ...): ggml loads these by path, so no
                           import or link leads PyInstaller to them
  dcp_desktop/demo/        the demo model, from the source tree when the bundle is built (the newest
                           one, whatever the installed wheel holds)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules the app never imports: checked by tests/test_packaging.py against what `dcp-chat` and the
# window import. `import torch` itself imports torch.distributed, torch.testing (and its _internal),
# torch.fx, torch.export, ...: those stay.
EXCLUDES = [
    "tkinter", "matplotlib", "IPython", "pytest", "hypothesis", "transformers", "tokenizers",
    "dcp_desktop.eval", "dcp_desktop.bench", "dcp_desktop.export", "dcp_desktop.torch_llama",
    "torch._inductor", "torch._dynamo", "torch.onnx", "torch.utils.tensorboard", "torch.utils.benchmark",
    "torch._lazy", "torch.distributed._tensor", "torch.distributed.tensor", "torch.distributed.fsdp",
    "torch.distributed.checkpoint", "torch.distributed.pipelining", "torch.distributed.elastic",
    "functorch", "sympy", "mpmath", "networkx", "triton",
    "PySide6.QtNetwork", "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtOpenGL", "PySide6.QtSql",
    "PySide6.QtPrintSupport", "PySide6.QtDBus", "PySide6.QtSvg", "PySide6.QtConcurrent", "PySide6.QtTest",
]

# Files the hooks collect that no import reaches (paths inside the bundle, "/"-separated): torch's
# C++ tests, tools and headers; Qt's translations and the plugins for what the app does not use
# (Wayland: X11 clients run on it through XWayland; EGL, databases, TLS, printing, QML).
DROP_PREFIXES = (
    "torch/bin/", "torch/test/", "torch/include/", "torch/share/", "torch/_inductor/", "torch/_dynamo/",
    "torch/utils/benchmark/", "torch/onnx/",
    "PySide6/Qt/translations/", "PySide6/translations/",
)
DROP_QT_PLUGINS = ("wayland-", "egldeviceintegrations", "sqldrivers", "tls", "networkinformation",
                   "qmltooling", "designer", "printsupport", "vectorimageformats")
DROP_NAMES = ("libtorchbind_test.so", "libjitbackend_test.so", "libbackend_with_compiler.so",
              "libaoti_custom_ops.so", "torchbind_test.dll", "jitbackend_test.dll",
              "backend_with_compiler.dll", "aoti_custom_ops.dll")
# Qt platform plugins kept: the desktop's own (X11, macOS, Windows) and offscreen (headless runs).
KEEP_PLATFORMS = {"libqxcb.so", "libqoffscreen.so", "libqcocoa.dylib", "libqoffscreen.dylib",
                  "qwindows.dll", "qoffscreen.dll"}


def package_dir() -> Path:
    """The installed dcp_desktop (with its compiled parts), never the source tree."""
    native = importlib.util.find_spec("dcp_desktop._native")
    if native is None or "site-packages" not in native.origin:
        raise SystemExit(f"dcp_desktop is not installed in {sys.prefix} (found {native and native.origin}); "
                         "build from the clean venv the platform's build script makes")
    return Path(native.origin).parent


def llama_lib(extra: list[Path] = ()) -> tuple[list, list]:
    """(binaries, datas) for dcp_desktop/llama_lib: every shared library there (and `extra` ones,
    e.g. the CUDA runtime DLLs on Windows), and build_info.json."""
    folder = package_dir() / "llama_lib"
    libs = sorted(p for p in folder.iterdir() if p.suffix in (".so", ".dylib", ".dll")) + list(extra)
    if not any(p.name.startswith(("libggml-cpu", "ggml-cpu")) for p in libs):
        raise SystemExit(f"no ggml CPU backend in {folder}: our wheel was built without llama.cpp")
    return ([(str(p), "dcp_desktop/llama_lib") for p in libs],
            [(str(folder / "build_info.json"), "dcp_desktop/llama_lib")])


def demo_model() -> list:
    """datas for dcp_desktop/demo: the demo model's GGUF pair from the source tree."""
    files = sorted((ROOT / "dcp_desktop" / "demo").glob("*.gguf"))
    if len(files) != 2:
        raise SystemExit(f"expected the demo model's two .gguf files in {ROOT / 'dcp_desktop' / 'demo'}, found {files}")
    return [(str(p), "dcp_desktop/demo") for p in files]


def kept(entry) -> bool:
    """Whether a TOC entry (dest, source, kind) stays in the trimmed bundle."""
    dest = entry[0].replace(os.sep, "/")
    name = dest.rsplit("/", 1)[-1]
    if dest.startswith(DROP_PREFIXES) or name in DROP_NAMES:
        return False
    if "/plugins/" in dest and dest.startswith("PySide6/"):
        plugin_dir = dest.split("/plugins/", 1)[1].split("/", 1)[0]
        if plugin_dir.startswith(DROP_QT_PLUGINS):
            return False
        if plugin_dir == "platforms":
            return name in KEEP_PLATFORMS
    return True


def trim(analysis) -> None:
    """Drop what `kept` rejects from an Analysis' binaries and datas (in place)."""
    analysis.binaries = [e for e in analysis.binaries if kept(e)]
    analysis.datas = [e for e in analysis.datas if kept(e)]
