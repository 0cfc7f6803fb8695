"""What the packaged app relies on (packaging/): the launcher picks the program by the name it was
started under, the window says when it is ready (the smoke test times start-up by it), and the
bundle's trimmed modules are ones that neither dcp-chat nor the window imports.

The bundle itself is built and tested by packaging/build_linux.sh and packaging/smoke_test.sh
(CI runs them when DCP_PACKAGING=1): minutes of PyInstaller, too slow for this suite."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported: no display needed

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packaging"))
import bundle_common  # noqa: E402  (packaging/bundle_common.py: what every spec leaves out)
import launcher  # noqa: E402  (packaging/launcher.py: the bundle's one program)

sys.path.remove(str(ROOT / "packaging"))


@pytest.mark.parametrize(("argv0", "module"), [
    ("/opt/dcp-desktop/dcp-chat", "dcp_desktop.cli"),
    ("dcp-chat.exe", "dcp_desktop.cli"),
    ("/usr/bin/dcp-desktop", "dcp_desktop.gui.app"),
    ("dcp-desktop.exe", "dcp_desktop.gui.app"),
])
def test_launcher_runs_the_program_its_name_says(argv0, module, monkeypatch):
    called = []
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setattr(f"{module}.main", lambda: called.append(module) or 0)
    assert launcher.main() == 0
    assert called == [module]


def test_window_says_when_it_is_shown_and_when_the_model_has_loaded(tmp_path, tiny):
    """The real `main` in a child process (it owns the QApplication), the tiny pair as the demo model."""
    script = textwrap.dedent(f"""
        import sys
        from PySide6.QtCore import QTimer
        from dcp_desktop import models
        from dcp_desktop.gui import app
        models.BUNDLED = {{"demo": models.BundledModel("demo", {str(tiny.llm)!r}, {str(tiny.mmproj)!r}, "tiny")}}
        QTimer.singleShot(60_000, lambda: sys.exit("timed out"))
        shown = app.report_ready
        def report_and_quit(window):
            shown(window)
            window.controller.state_changed.connect(
                lambda: window.controller.model_name and QTimer.singleShot(0, window.close))
        app.report_ready = report_and_quit
        sys.exit(app.main(["dcp-desktop"]))
    """)
    env = {**os.environ, "DCP_DESKTOP_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    ready = [line for line in done.stderr.splitlines() if line.startswith("dcp-desktop: ready")]
    assert done.returncode == 0, done.stderr
    assert ready == ["dcp-desktop: ready (window shown)", "dcp-desktop: ready (model demo loaded)"], done.stderr


def test_trimmed_modules_are_not_imported_by_dcp_chat(tiny, image_path):
    """An answer from dcp-chat imports none of the modules the bundle leaves out (a module that
    starts being imported must leave bundle_common.EXCLUDES, or the bundle fails where the venv works)."""
    excludes = bundle_common.EXCLUDES
    script = textwrap.dedent(f"""
        import sys
        from dcp_desktop import cli
        try:
            cli.main([{str(image_path)!r}, "What is this?", "--model", {str(tiny.llm)!r},
                      "--mmproj", {str(tiny.mmproj)!r}, "--max-tokens", "4", "--threads", "1"])
        except SystemExit as stop:
            assert not stop.code, stop.code
        import dcp_desktop.gui.window  # the window's modules too
        print("\\n".join(sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.splitlines())
    imported = sorted(m for m in loaded for x in excludes if m == x or m.startswith(x + "."))
    assert not imported, f"the bundle leaves these out, but dcp-chat or the window imports them: {imported}"


@pytest.mark.parametrize(("dest", "keep"), [
    ("torch/lib/libtorch_cpu.so", True),
    ("torch/bin/protoc", False),
    ("torch/bin/torch_shm_manager", True),  # import torch checks it is there
    ("PySide6/Qt/plugins/platformthemes/libqgtk3.so", False),
    ("PySide6/Qt/plugins/platformthemes/libqxdgdesktopportal.so", True),
    ("torch/include/ATen/ATen.h", False),
    ("torch/lib/libtorchbind_test.so", False),
    ("PySide6/Qt/plugins/platforms/libqxcb.so", True),
    ("PySide6/Qt/plugins/platforms/libqoffscreen.so", True),
    ("PySide6/Qt/plugins/platforms/libqwayland.so", False),
    ("PySide6/Qt/plugins/platforms/libqvnc.so", False),
    ("PySide6/plugins/platforms/qwindows.dll", True),
    ("PySide6/Qt/plugins/wayland-shell-integration/libxdg-shell.so", False),
    ("PySide6/Qt/plugins/imageformats/libqjpeg.so", True),
    ("PySide6/Qt/plugins/xcbglintegrations/libqxcb-glx-integration.so", True),
    ("PySide6/Qt/translations/qtbase_de.qm", False),
    ("dcp_desktop/llama_lib/libggml-cpu-haswell.so", True),
    ("dcp_desktop/demo/dcp-demo.gguf", True),
])
def test_trimming_keeps_what_the_app_loads(dest, keep):
    assert bundle_common.kept((dest, "/src/" + dest, "BINARY")) is keep


def test_orphan_libraries_go_and_needed_ones_stay():
    """A library only a dropped plugin needed goes, with whatever only it needed; links to it go too."""
    deps = {"/s/app.so": {"libQt6Gui.so.6"}, "/s/libQt6Gui.so.6": {"libicu.so"}, "/s/libicu.so": set(),
            "/s/libQt6WaylandClient.so.6": {"libwayland-client.so.0"}, "/s/libwayland-client.so.0": set(),
            "/s/libpython3.11.so": set()}
    binaries = [("PySide6/app.so", "/s/app.so", "EXTENSION"),
                ("PySide6/Qt/lib/libQt6Gui.so.6", "/s/libQt6Gui.so.6", "BINARY"),
                ("libicu.so", "/s/libicu.so", "BINARY"),
                ("PySide6/Qt/lib/libQt6WaylandClient.so.6", "/s/libQt6WaylandClient.so.6", "BINARY"),
                ("libQt6WaylandClient.so.6", "PySide6/Qt/lib/libQt6WaylandClient.so.6", "SYMLINK"),
                ("libwayland-client.so.0", "/s/libwayland-client.so.0", "BINARY"),
                ("libpython3.11.so", "/s/libpython3.11.so", "BINARY")]
    kept = bundle_common.drop_orphans(binaries, needs=lambda path: deps[path])
    assert [e[0] for e in kept] == ["PySide6/app.so", "PySide6/Qt/lib/libQt6Gui.so.6", "libicu.so", "libpython3.11.so"]


def test_links_to_dropped_files_go():
    binaries = [("libQt6Gui.so.6", "PySide6/Qt/lib/libQt6Gui.so.6", "SYMLINK"),
                ("libQt6Network.so.6", "PySide6/Qt/lib/libQt6Network.so.6", "SYMLINK"),
                ("PySide6/Qt/lib/libQt6Gui.so.6", "/s/libQt6Gui.so.6", "BINARY")]
    datas = [("libllama.so", "dcp_desktop/llama_lib/libllama.so", "SYMLINK"),
             ("dcp_desktop/llama_lib/libllama.so", "/s/libllama.so", "DATA")]
    kept_binaries, kept_datas = bundle_common.drop_dangling_links(binaries, datas)
    assert [e[0] for e in kept_binaries] == ["libQt6Gui.so.6", "PySide6/Qt/lib/libQt6Gui.so.6"]
    assert kept_datas == datas
