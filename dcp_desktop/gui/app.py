"""`dcp-desktop`: start the window. Everything else lives in window.py (the view) and worker.py."""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from .settings import APPLICATION, ORGANISATION
from .window import MainWindow


def main(argv: list[str] | None = None) -> int:
    app = QApplication(sys.argv if argv is None else argv)
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("dcp-desktop")
    window = MainWindow()
    window.show()
    report_ready(window)
    return app.exec()


def report_ready(window: MainWindow) -> None:
    """Say on stderr when the window is on screen and when its model has loaded, once each: the
    bundle's smoke test (packaging/smoke_test.sh) times start-up by these lines."""
    QTimer.singleShot(0, lambda: print("dcp-desktop: ready (window shown)", file=sys.stderr, flush=True))
    controller = window.controller

    def model_state() -> None:
        if controller.model_name is not None:
            print(f"dcp-desktop: ready (model {controller.model_name} loaded)", file=sys.stderr, flush=True)
            controller.state_changed.disconnect(model_state)

    controller.state_changed.connect(model_state)


if __name__ == "__main__":
    sys.exit(main())
