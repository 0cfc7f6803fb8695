"""`dcp-desktop`: start the window. Everything else lives in window.py (the view) and worker.py."""

from __future__ import annotations

import sys

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
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
