"""The model manager: bundled models, catalog models (download with progress and cancel) and local
GGUF files.

A bundled model ships inside the package: Use loads it at once, with no download.

A download runs `dcp-chat pull NAME` (models.pull) in a child process. huggingface_hub's download
has no cancel hook and cannot be interrupted inside a thread, but a process can be ended: Cancel
kills it. The partial file stays in the Hugging Face cache and the next Download resumes it; the
dialog says so. Progress is the bytes in that model's cache folder against the catalog's size.
Closing the dialog hides it; downloads go on until they finish, are cancelled, or the app quits.
Picking files does not check them here: the window loads them in the worker and shows any
validation error (models.validate's message, as is).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QTimer, Signal
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QFileDialog, QFrame, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QVBoxLayout)

from .. import models

POLL_MS = 500


def downloaded_bytes(entry: models.CatalogEntry) -> int:
    """Bytes of this model in the Hugging Face cache, partial files included."""
    folder = models.cache_dir() / ("models--" + entry.repo_id.replace("/", "--")) / "blobs"
    return sum(path.stat().st_size for path in folder.glob("*") if path.is_file()) if folder.is_dir() else 0


class Download(QObject):
    """One catalog download in a child process that Cancel can end."""

    progress = Signal(int)  # bytes so far
    finished = Signal(bool, str)  # ok, message for the user

    def __init__(self, entry: models.CatalogEntry, parent=None):
        super().__init__(parent)
        self.entry = entry
        self.cancelled = False
        self.process = QProcess(self)
        self.process.finished.connect(self._on_finished)
        self.process.errorOccurred.connect(self._on_error)
        self._poll = QTimer(self, interval=POLL_MS, timeout=lambda: self.progress.emit(downloaded_bytes(entry)))

    def start(self) -> None:
        self.process.start(sys.executable, ["-m", "dcp_desktop.cli", "pull", self.entry.name])
        self._poll.start()

    def cancel(self) -> None:
        self.cancelled = True
        self.process.kill()  # the one way to stop hf_hub_download; it resumes from the partial file

    @property
    def running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def _on_finished(self, exit_code: int, _status) -> None:
        self._poll.stop()
        if self.cancelled:
            self.finished.emit(False, "Cancelled. The part already downloaded is kept: Download resumes it.")
        elif exit_code == 0:
            self.finished.emit(True, "Downloaded and checked.")
        else:
            self.finished.emit(False, self._error_line())

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._poll.stop()
            self.finished.emit(False, f"could not start the download ({self.process.errorString()})")

    def _error_line(self) -> str:
        """The CLI's one-line error (`dcp-chat: error: ...`), else the last line it printed."""
        lines = bytes(self.process.readAllStandardError()).decode("utf-8", "replace").strip().splitlines()
        errors = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
        return errors[-1] if errors else (lines[-1] if lines else "the download failed")


class BundledRow(QFrame):
    """One bundled model: what it is, its size on disk, and Use."""

    use_clicked = Signal(str)

    def __init__(self, model: models.BundledModel, parent=None):
        super().__init__(parent)
        self.model = model
        self.setFrameShape(QFrame.Shape.StyledPanel)
        title = QLabel(f"<b>{model.name}</b> — {model.description}", self)
        title.setWordWrap(True)
        missing = model.missing_files()
        self.state = QLabel(_bundled_state(model, missing), self)
        self.use_button = QPushButton("Use", self, clicked=lambda: self.use_clicked.emit(model.name))
        self.use_button.setEnabled(not missing)
        buttons = QHBoxLayout()
        buttons.addWidget(self.state, 1)
        buttons.addWidget(self.use_button)
        column = QVBoxLayout(self)
        column.addWidget(title)
        column.addLayout(buttons)


def _bundled_state(model: models.BundledModel, missing: list[Path]) -> str:
    if missing:
        return "bundled, but missing from this installation: reinstall dcp-desktop"
    size = sum(path.stat().st_size for path in (model.files.llm, model.files.mmproj))
    return f"bundled, no download · {size / 1e6:.1f} MB on disk"


class CatalogRow(QFrame):
    """One catalog model: what it is, its state, Download/Cancel and Use."""

    use_clicked = Signal(str)

    def __init__(self, status: models.ModelStatus, parent=None):
        super().__init__(parent)
        self.entry = status.entry
        self.download: Download | None = None
        self.setFrameShape(QFrame.Shape.StyledPanel)
        title = QLabel(f"<b>{self.entry.name}</b> — {self.entry.description}", self)
        title.setWordWrap(True)
        self.state = QLabel(self)
        self.message = QLabel(self, visible=False)  # the last download's outcome, on its own full-width line
        self.message.setWordWrap(True)
        self.progress = QProgressBar(self, maximum=1000, visible=False)
        self.download_button = QPushButton(self, clicked=self.toggle_download)
        self.use_button = QPushButton("Use", self, clicked=lambda: self.use_clicked.emit(self.entry.name))
        buttons = QHBoxLayout()
        buttons.addWidget(self.state, 1)
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.use_button)
        column = QVBoxLayout(self)
        column.addWidget(title)
        column.addWidget(self.progress)
        column.addLayout(buttons)
        column.addWidget(self.message)
        self.show_status(status)

    def show_status(self, status: models.ModelStatus) -> None:
        self.state.setText(f"{status.size_bytes / 1e9:.1f} GB on disk" if status.downloaded else
                           f"not downloaded (~{self.entry.download_gb:.1f} GB, once)")
        self.use_button.setEnabled(status.downloaded)
        self.download_button.setText("Download")
        self.download_button.setVisible(not status.downloaded)
        self.progress.setVisible(False)

    def toggle_download(self) -> None:
        if self.download is not None and self.download.running:
            self.download.cancel()
            self.state.setText("Stopping the download…")
            return
        self.download = Download(self.entry, self)
        self.download.progress.connect(self._on_progress)
        self.download.finished.connect(self._on_finished)
        self.download.start()
        self.download_button.setText("Cancel")
        self.progress.setVisible(True)
        self.message.setVisible(False)
        self._on_progress(downloaded_bytes(self.entry))

    def _on_progress(self, done: int) -> None:
        total = self.entry.download_gb * 1e9
        self.progress.setValue(min(1000, int(1000 * done / total)))
        self.state.setText(f"Downloading: {done / 1e9:.2f} of ~{self.entry.download_gb:.1f} GB")

    def _on_finished(self, ok: bool, message: str) -> None:
        self.show_status(next(s for s in models.list_models() if s.entry.name == self.entry.name))
        failed = not ok and not self.download.cancelled
        self.message.setText(message)
        self.message.setStyleSheet("color: #d03030;" if failed else "")
        self.message.setVisible(True)
        self.window().adjustSize()  # a dialog does not grow by itself for wrapped text
        if ok:
            self.use_clicked.emit(self.entry.name)


class ModelsDialog(QDialog):
    """Bundled models, catalog models and local files. Emits `model_chosen(model, mmproj or None)`."""

    model_chosen = Signal(str, object)

    def __init__(self, current: str | None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Models")
        self.setMinimumWidth(620)
        intro = QLabel("Models run on this computer; nothing you ask leaves it. A catalog model is "
                       f"downloaded once from Hugging Face into {models.cache_dir()}, then works offline. "
                       "Closing this window does not stop a download.", self)
        intro.setWordWrap(True)
        self.current_label = QLabel(self)
        self.set_current(current)
        self.bundled_rows = [BundledRow(model, self) for model in models.BUNDLED.values()]
        self.rows = [CatalogRow(status, self) for status in models.list_models()]
        for row in (*self.bundled_rows, *self.rows):
            row.use_clicked.connect(lambda name: self._choose(name, None))
        local = QHBoxLayout()
        local.addWidget(QPushButton("Open GGUF files…", self, clicked=self._pick_files))
        local.addWidget(QPushButton("Open model folder…", self, clicked=self._pick_folder))
        local.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self, rejected=self.reject)
        column = QVBoxLayout(self)
        column.addWidget(intro)
        column.addWidget(self.current_label)
        for row in (*self.bundled_rows, *self.rows):
            column.addWidget(row)
        column.addWidget(QLabel("Or use files you already have (an LLM .gguf and its mmproj .gguf):", self))
        column.addLayout(local)
        column.addWidget(close)

    def choose_files(self, paths: list[str]) -> None:
        """An LLM .gguf alone (its *mmproj* beside it), or an LLM and an mmproj in either order."""
        projectors = [p for p in paths if "mmproj" in Path(p).name.lower()]
        llms = [p for p in paths if p not in projectors]
        if len(paths) == 2 and len(projectors) != 1:
            llm, mmproj = paths  # the names do not tell: take them in order; validation says if swapped
        else:
            llm, mmproj = (llms or paths)[0], (projectors[0] if projectors and llms else None)
        self._choose(llm, mmproj)

    def _choose(self, model: str, mmproj: str | None) -> None:
        self.model_chosen.emit(model, mmproj)
        self.hide()

    def _pick_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "LLM and mmproj GGUF files", "", "GGUF models (*.gguf)")
        if paths:
            self.choose_files(paths)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder with an LLM and its mmproj")
        if folder:
            self._choose(folder, None)

    def set_current(self, name: str | None) -> None:
        self.current_label.setText(f"In use: {name or 'none yet'}")

    def cancel_downloads(self) -> None:
        """The window calls this on quit: no download process outlives the app."""
        for row in self.rows:
            if row.download is not None and row.download.running:
                row.download.cancel()
                row.download.process.waitForFinished(3000)
