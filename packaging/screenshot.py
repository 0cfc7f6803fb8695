"""Screenshot of dcp-desktop mid-conversation with "What the model sees" on, in a real X window.

    python packaging/screenshot.py [--out /tmp/dcp-desktop-screenshot.png] [--model DIR_OR_GGUF]
                                   [--image tests/data/shapes.png] [--method NAME] [--question Q ...]

Without DISPLAY it starts Xvfb. Qt's xcb plugin needs, on a bare Debian 12: `apt-get install xvfb
libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0` (QT_DEBUG_PLUGINS=1 names any missing
one). Without --model it
builds the small random test model (models/make_test_model.py; its answers are gibberish). The app
runs on a throw-away data folder (DCP_DESKTOP_HOME), so the user's history is never touched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREEN = "1280x860x24"


def start_xvfb(display: str = ":99") -> subprocess.Popen:
    server = subprocess.Popen(["Xvfb", display, "-screen", "0", SCREEN, "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = Path(f"/tmp/.X11-unix/X{display.lstrip(':')}")
    for _ in range(100):
        if socket.exists():
            break
        time.sleep(0.05)
    os.environ["DISPLAY"] = display
    return server


def tiny_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "models"))
    import make_test_model  # noqa: PLC0415 (needs transformers: a dev dependency)

    make_test_model.build(folder, seed=0)
    return folder


def wait_until(app, condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def converse(app, window, image: Path, questions: list[str]) -> None:
    """Load, attach, ask each question and wait for each answer, as a user would."""
    wait_until(app, lambda: window.controller.model_name is not None or window.controller.model_files is None)
    if window.controller.model_name is None:
        raise SystemExit("the model did not load: " + " | ".join(m.text for m in window.controller.chat_model.messages()))
    window.controller.attach([str(image)])
    wait_until(app, lambda: all(a.prepared for a in window.controller.attachments.values()))
    for question in questions:
        window.composer.input.setPlainText(question)
        window.send()
        wait_until(app, lambda: window.controller.answering is None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/dcp-desktop-screenshot.png")
    parser.add_argument("--model", help="a model folder, LLM .gguf or catalog name (default: the tiny test model)")
    parser.add_argument("--image", default=str(ROOT / "tests" / "data" / "shapes.png"))
    parser.add_argument("--method", help="pruning method (default: the app's)")
    parser.add_argument("--question", action="append", default=None,
                        help="a question to ask (repeatable; default: two generic ones)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dcp-desktop-screenshot-"))
    os.environ["DCP_DESKTOP_HOME"] = str(scratch / "home")
    server = start_xvfb() if not os.environ.get("DISPLAY") else None
    try:
        take(args, args.model or str(tiny_model(scratch / "tiny-llava")))
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def take(args, model: str) -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    from PySide6.QtWidgets import QApplication  # noqa: PLC0415 (after DISPLAY is set)

    from dcp_desktop.gui.settings import Settings  # noqa: PLC0415
    from dcp_desktop.gui.window import MainWindow  # noqa: PLC0415

    app = QApplication(sys.argv[:1])
    settings = Settings()
    settings.model, settings.max_tokens = model, 48
    if args.method:
        settings.method = args.method
    window = MainWindow(settings)
    window.show()
    converse(app, window, Path(args.image), args.question or ["What is in the image?", "Which shape is on the left?"])
    tile = window.chat_view.bubbles[0].tiles[0]
    tile.toggle.setChecked(True)
    wait_until(app, lambda: tile.picture.overlay_shown)
    for _ in range(20):  # let the throttled redraws and the layout settle
        app.processEvents()
        time.sleep(0.02)
    window.chat_view.verticalScrollBar().setValue(0)
    app.processEvents()
    window.grab().save(args.out)
    print(f"saved {args.out}: {window.width()}x{window.height()}, overlay cells drawn: {tile.picture.cells_drawn}")
    window.close()


if __name__ == "__main__":
    main()
