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
# torch/bin holds C++ test programs and protoc, and the one program `import torch` insists on.
KEEP_FILES = ("torch/bin/torch_shm_manager",)
DROP_QT_PLUGINS = ("wayland-", "egldeviceintegrations", "sqldrivers", "tls", "networkinformation",
                   "qmltooling", "designer", "printsupport", "vectorimageformats",
                   "generic")  # evdev/tuio input for kiosk devices without a window system
# GTK's look: it would load the user's GTK with our bundled glib and cairo (PyInstaller bundles those
# as its dependencies), a known way to crash; Qt's own style and the xdg portal's dialogs stay.
DROP_PLUGIN_FILES = ("platformthemes/libqgtk3.so",)
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
    if dest in KEEP_FILES:
        return True
    if dest.startswith(DROP_PREFIXES) or name in DROP_NAMES:
        return False
    if "/plugins/" in dest and dest.startswith("PySide6/"):
        plugin = dest.split("/plugins/", 1)[1]
        plugin_dir = plugin.split("/", 1)[0]
        if plugin_dir.startswith(DROP_QT_PLUGINS) or plugin in DROP_PLUGIN_FILES:
            return False
        if plugin_dir == "platforms":
            return name in KEEP_PLATFORMS
    return True


def trim(analysis) -> None:
    """Drop what `kept` rejects from an Analysis' binaries and datas (in place), then the shared
    libraries only dropped files needed (see drop_orphans)."""
    analysis.binaries = [e for e in analysis.binaries if kept(e)]
    analysis.datas = [e for e in analysis.datas if kept(e)]
    analysis.binaries = drop_orphans(analysis.binaries)
    analysis.binaries, analysis.datas = drop_dangling_links(analysis.binaries, analysis.datas)


def drop_dangling_links(binaries: list, datas: list) -> tuple[list, list]:
    """Remove SYMLINK entries (dest, target, "SYMLINK") whose target is no longer collected."""
    present = {e[0].replace(os.sep, "/") for e in binaries + datas if e[2] != "SYMLINK"}

    def live(entry) -> bool:
        if entry[2] != "SYMLINK":
            return True
        target = os.path.normpath(os.path.join(os.path.dirname(entry[0]), entry[1])).replace(os.sep, "/")
        return target in present
    return [e for e in binaries if live(e)], [e for e in datas if live(e)]


# Where PyInstaller's dependency analysis puts libraries nothing imports by name: the bundle's top
# level (system libraries) and Qt's lib folder. Only these are candidates for drop_orphans.
ORPHAN_FOLDERS = ("", "PySide6/Qt/lib")


def drop_orphans(binaries: list, needs=None) -> list:
    """Dependency analysis ran before trimming, so the libraries of dropped plugins are still there
    (Wayland client, EGLFS, the GTK stack). Remove every library in ORPHAN_FOLDERS that no kept
    binary lists as DT_NEEDED (or the platform's equivalent), repeating until none is left, and the
    links to it. `needs(path) -> names` is PyInstaller's dependency reader unless given (tests).
    A library loaded with dlopen by name alone would be lost: the smoke test runs the real app."""
    if needs is None:
        from PyInstaller.depend.bindepend import get_imports

        def needs(path):
            return {os.path.basename(name) for name, _ in get_imports(path)}
    cache: dict[str, set] = {}

    def folder(dest: str) -> str:
        return os.path.dirname(dest.replace(os.sep, "/"))

    while True:
        needed = set()
        for dest, source, kind in binaries:
            if kind != "SYMLINK":
                needed |= cache.setdefault(source, needs(source))
        orphans = {os.path.basename(dest) for dest, source, kind in binaries
                   if kind == "BINARY" and folder(dest) in ORPHAN_FOLDERS
                   and os.path.basename(dest) not in needed and not os.path.basename(dest).startswith("libpython")}
        if not orphans:
            return binaries
        binaries = [e for e in binaries if not (os.path.basename(e[0]) in orphans and folder(e[0]) in ORPHAN_FOLDERS)]
