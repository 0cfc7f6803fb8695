"""Where the user writes: the attachments waiting for the next question, the input box, Send/Stop.

Enter sends, Shift+Enter starts a new line. Pasting or dropping an image (data or files) into the
box attaches it instead of inserting text.
"""

from __future__ import annotations


from PySide6.QtCore import QBuffer, QIODevice, QMimeData, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSizePolicy, QToolButton,
                               QVBoxLayout, QWidget)

from .chat_controller import Attachment
from .worker import PreparedImage

CHIP_PX = 44
INPUT_LINES = 3


def sources_from_mime(mime: QMimeData) -> list[str | bytes]:
    """Images in pasted or dropped data: local file paths first, else the image itself as PNG bytes."""
    files = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []
    if files:
        return files
    if mime.hasImage():
        return [png_bytes(QImage(mime.imageData()))]
    return []


def png_bytes(image: QImage) -> bytes:
    buffer = QBuffer()
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(buffer.data())


class InputBox(QPlainTextEdit):
    submitted = Signal()
    images_pasted = Signal(list)  # sources_from_mime()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setPlaceholderText("Ask about your images…  (Enter sends, Shift+Enter: new line)")
        self.setTabChangesFocus(True)
        line = self.fontMetrics().lineSpacing()
        self.setFixedHeight(line * INPUT_LINES + 16)

    def keyPressEvent(self, event) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)

    def canInsertFromMimeData(self, source: QMimeData) -> bool:
        return bool(sources_from_mime(source)) or super().canInsertFromMimeData(source)

    def insertFromMimeData(self, source: QMimeData) -> None:
        images = sources_from_mime(source)
        if images:
            self.images_pasted.emit(images)
        else:
            super().insertFromMimeData(source)


class AttachmentChip(QWidget):
    removed = Signal(str)  # key

    def __init__(self, attachment: Attachment, parent=None):
        super().__init__(parent)
        self.key = attachment.key
        self.picture = QLabel(self)
        self.picture.setFixedSize(CHIP_PX, CHIP_PX)
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label = QLabel(attachment.name, self)
        self.label.setMaximumWidth(160)
        remove = QToolButton(self)
        remove.setText("×")
        remove.setToolTip("Remove this image")
        remove.clicked.connect(lambda: self.removed.emit(self.key))
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.picture)
        row.addWidget(self.label)
        row.addWidget(remove)
        self.set_ready(attachment.prepared)

    def set_ready(self, prepared: PreparedImage | None) -> None:
        if prepared is None:
            self.picture.setText("…")
            self.picture.setToolTip("reading the image")
            return
        pixmap = QPixmap()
        pixmap.loadFromData(prepared.thumbnail_png)
        self.picture.setPixmap(pixmap.scaled(CHIP_PX, CHIP_PX, Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.SmoothTransformation))
        self.picture.setToolTip(f"{prepared.width}×{prepared.height}")


class Composer(QWidget):
    """Attachments, the input box and the buttons; the window decides what the buttons do."""

    send_clicked = Signal()
    stop_clicked = Signal()
    attach_clicked = Signal()
    attachment_removed = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.input = InputBox(self)
        self.input.submitted.connect(self._on_enter)
        self._chips: dict[str, AttachmentChip] = {}
        self._generating = False
        self.strip = QHBoxLayout()
        self.strip.setContentsMargins(0, 0, 0, 0)
        self.strip.addStretch(1)
        attach = QToolButton(self)
        attach.setText("Image…")
        attach.setToolTip("Attach an image (Ctrl+O); you can also drop or paste (Ctrl+V) one")
        attach.clicked.connect(self.attach_clicked)
        self.send_button = QPushButton("Send", self)
        self.send_button.setDefault(False)
        self.send_button.clicked.connect(self._on_submit)
        self.send_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)
        attach.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)
        row = QHBoxLayout()
        row.addWidget(attach)
        row.addWidget(self.input, 1)
        row.addWidget(self.send_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(8, 4, 8, 8)
        column.addLayout(self.strip)
        column.addLayout(row)

    def _on_submit(self) -> None:
        (self.stop_clicked if self._generating else self.send_clicked).emit()

    def _on_enter(self) -> None:
        if not self._generating:  # Enter never stops an answer; Esc and the Stop button do
            self.send_clicked.emit()

    def set_generating(self, generating: bool) -> None:
        self._generating = generating
        self.send_button.setText("Stop" if generating else "Send")
        self.send_button.setToolTip("Stop the answer (Esc)" if generating else "Send (Enter)")

    def add_attachment(self, attachment: Attachment) -> None:
        chip = AttachmentChip(attachment, self)
        chip.removed.connect(self.attachment_removed)
        self._chips[attachment.key] = chip
        self.strip.insertWidget(self.strip.count() - 1, chip)

    def attachment_ready(self, key: str, prepared: PreparedImage) -> None:
        self._chips[key].set_ready(prepared)

    def remove_attachment(self, key: str) -> None:
        chip = self._chips.pop(key, None)
        if chip is not None:
            self.strip.removeWidget(chip)
            chip.hide()  # at once: deleteLater waits for the event loop
            chip.deleteLater()

    def take_text(self) -> str:
        text = self.input.toPlainText().strip()
        self.input.clear()
        return text
