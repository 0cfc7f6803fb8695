"""The conversation view: one bubble per ChatModel row, in a scroll area.

A QListView delegate cannot host buttons and selectable Markdown, so ChatView builds a small widget
per row and follows the model's signals (rowsInserted/Removed, dataChanged, modelReset). While an
answer streams, the model changes on every token; the view redraws at most every REDRAW_MS.
Colours come from the palette (stylesheet `palette(...)`), so light and dark themes both work.
"""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QTextOption
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QTextBrowser,
                               QToolButton, QVBoxLayout, QWidget)

from .chat_model import ChatModel, ImageRef, Message
from .overlay import Overlay, OverlayImage

REDRAW_MS = 50
BUBBLE_WIDTH_SHARE = 0.78  # of the view's width
BUBBLE_STYLE = """
#user { background: palette(highlight); border-radius: 12px; }
#user QTextBrowser, #user QLabel { color: palette(highlighted-text); }
#assistant { background: palette(alternate-base); border: 1px solid palette(mid); border-radius: 12px; }
#notice { background: rgba(220, 60, 60, 40); border: 1px solid rgba(220, 60, 60, 160); border-radius: 8px; }
QTextBrowser { background: transparent; border: none; }
#stats { color: palette(placeholder-text); }
"""


def format_stats(stats: dict | None) -> str:
    """One line under an answer: speed and the image tokens the model saw."""
    if not stats:
        return ""
    parts = []
    if stats.get("first_token_ms") is not None:
        parts.append(f"first token {_duration(stats['first_token_ms'])}")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.1f} tokens/s")
    if stats.get("image_tokens"):
        parts.append(f"{stats['image_tokens']} of {stats['image_tokens_full']} image tokens ({stats['method']})")
    if stats.get("stopped"):
        parts.append("stopped")
    return " · ".join(parts)


def _duration(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


class MessageText(QTextBrowser):
    """Selectable text that is as tall as its contents and as wide as it needs (up to a limit)."""

    def __init__(self, markdown: bool, parent=None):
        super().__init__(parent)
        self._markdown = markdown
        self._max_width = 400
        self.setOpenLinks(False)  # nothing leaves the machine by accident
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWordWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)  # model output can be one long word
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(2)

    def set_content(self, text: str) -> None:
        if self._markdown:
            self.setMarkdown(text)
        else:
            self.setPlainText(text)
        self._fit()

    def set_max_width(self, width: int) -> None:
        self._max_width = max(120, width)
        self._fit()

    def _fit(self) -> None:
        document = self.document()
        document.setTextWidth(-1)  # natural width first, so short messages get small bubbles
        width = min(self._max_width, int(document.idealWidth()) + 4)
        document.setTextWidth(width)
        self.setFixedSize(width, int(document.size().height()) + 2)


class ImageTile(QWidget):
    """A thumbnail with its "what the model sees" toggle and the kept-token caption."""

    def __init__(self, image: ImageRef, parent=None):
        super().__init__(parent)
        self.picture = OverlayImage(image.thumbnail, self)
        self.toggle = QToolButton(self)
        self.toggle.setCheckable(True)
        self.toggle.setText("What the model sees")
        self.toggle.toggled.connect(self.picture.show_overlay)
        self.caption = QLabel(self)
        self.caption.setObjectName("stats")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.picture)
        row = QHBoxLayout()
        row.addWidget(self.toggle)
        row.addWidget(self.caption)
        row.addStretch(1)
        layout.addLayout(row)
        self.set_selection(image.selection)

    def set_selection(self, selection: dict | None) -> None:
        overlay = None if selection is None else Overlay.from_dict(selection)
        self.picture.set_overlay(overlay)
        self.toggle.setEnabled(overlay is not None)
        if overlay is None:
            self.toggle.setChecked(False)
            self.caption.setText("sent with the next question")
        else:
            self.caption.setText(overlay.caption())
            self.picture.show_overlay(self.toggle.isChecked())


class MessageBubble(QFrame):
    """One message: its images, its text and, for answers, stats and buttons."""

    copy_clicked = Signal()
    regenerate_clicked = Signal()

    def __init__(self, message: Message, parent=None):
        super().__init__(parent)
        self.setObjectName(message.role)
        self.role = message.role
        self.tiles = [ImageTile(image, self) for image in message.images]
        self._image_shas = [image.sha256 for image in message.images]
        self.text = MessageText(markdown=message.role == "assistant", parent=self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        layout.setSpacing(6)
        for tile in self.tiles:
            layout.addWidget(tile)
        layout.addWidget(self.text)
        self.footer = self._footer() if message.role == "assistant" else None
        if self.footer:
            layout.addWidget(self.footer)
        self.update_from(message)

    def _footer(self) -> QWidget:
        footer = QWidget(self)
        row = QHBoxLayout(footer)
        row.setContentsMargins(0, 0, 0, 0)
        self.stats = QLabel(footer)
        self.stats.setObjectName("stats")
        self.stats.setWordWrap(True)
        self.copy_button = QToolButton(footer)
        self.copy_button.setText("Copy")
        self.copy_button.clicked.connect(self.copy_clicked)
        self.regenerate_button = QToolButton(footer)
        self.regenerate_button.setText("Regenerate")
        self.regenerate_button.clicked.connect(self.regenerate_clicked)
        row.addWidget(self.stats, 1)
        row.addWidget(self.copy_button)
        row.addWidget(self.regenerate_button)
        return footer

    def update_from(self, message: Message) -> None:
        self.text.set_content(message.text or ("…" if message.streaming else ""))
        for tile, image in zip(self.tiles, message.images):
            tile.set_selection(image.selection)
        if self.footer:
            self.stats.setText(format_stats(message.stats))
            self.copy_button.setEnabled(not message.streaming)

    def set_max_width(self, width: int) -> None:
        self.text.set_max_width(width - 24)
        if self.footer:
            self.footer.setMaximumWidth(width - 24)


class ChatView(QScrollArea):
    """Shows a ChatModel as bubbles: the user's on the right, answers and notices on the left."""

    copy_requested = Signal(int)  # row
    regenerate_requested = Signal(int)  # row

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self._content = QWidget()
        self._column = QVBoxLayout(self._content)
        self._column.setSpacing(10)
        self._column.addStretch(1)  # keeps bubbles at the top of a short chat
        self.setWidget(self._content)
        self.setStyleSheet(BUBBLE_STYLE)
        self.bubbles: list[MessageBubble] = []
        self._model: ChatModel | None = None
        self._dirty: set[int] = set()
        self._redraw = QTimer(self, singleShot=True, interval=REDRAW_MS, timeout=self._redraw_dirty)
        self.verticalScrollBar().rangeChanged.connect(self._follow_bottom)
        self._at_bottom = True

    def set_model(self, model: ChatModel) -> None:
        self._model = model
        model.rowsInserted.connect(self._rows_inserted)
        model.rowsRemoved.connect(self._rows_removed)
        model.dataChanged.connect(self._data_changed)
        model.modelReset.connect(self._reset)
        self._reset()

    # --- following the model -------------------------------------------------------------------

    def _reset(self) -> None:
        for bubble in self.bubbles:
            self._drop(bubble.parentWidget())
        self.bubbles, self._dirty = [], set()
        self._rows_inserted(QModelIndex(), 0, self._model.rowCount() - 1)
        self._at_bottom = True

    def _rows_inserted(self, _parent, first: int, last: int) -> None:
        for row in range(first, last + 1):
            bubble = self._bubble(self._model.message(row))
            self.bubbles.insert(row, bubble)
            self._column.insertWidget(row, bubble.parentWidget())
        self._at_bottom = True
        self._update_buttons()

    def _rows_removed(self, _parent, first: int, last: int) -> None:
        for row in range(last, first - 1, -1):
            self._drop(self.bubbles.pop(row).parentWidget())
        self._dirty = {row for row in self._dirty if row < first}
        self._update_buttons()

    def _drop(self, holder: QWidget) -> None:
        self._column.removeWidget(holder)
        holder.hide()  # at once: deleteLater waits for the event loop
        holder.deleteLater()

    def _data_changed(self, top, bottom, _roles=()) -> None:
        self._dirty.update(range(top.row(), bottom.row() + 1))
        if not self._redraw.isActive():
            self._redraw.start()

    def _redraw_dirty(self) -> None:
        bar = self.verticalScrollBar()
        self._at_bottom = bar.value() >= bar.maximum() - 8
        for row in sorted(self._dirty):
            if row < len(self.bubbles):
                self.bubbles[row].update_from(self._model.message(row))
        self._dirty.clear()
        self._update_buttons()

    def _follow_bottom(self, _low: int, high: int) -> None:
        if self._at_bottom:  # stay at the newest text unless the user scrolled up to read
            self.verticalScrollBar().setValue(high)

    # --- bubbles -------------------------------------------------------------------------------

    def _bubble(self, message: Message) -> MessageBubble:
        """A bubble in a full-width row, pushed right (the user's) or left (everything else)."""
        holder = QWidget(self._content)
        row = QHBoxLayout(holder)
        row.setContentsMargins(8, 0, 8, 0)
        bubble = MessageBubble(message, holder)
        bubble.set_max_width(self._bubble_width())
        bubble.copy_clicked.connect(lambda: self.copy_requested.emit(self.bubbles.index(bubble)))
        bubble.regenerate_clicked.connect(lambda: self.regenerate_requested.emit(self.bubbles.index(bubble)))
        if message.role == "user":
            row.addStretch(1)
        row.addWidget(bubble)
        if message.role != "user":
            row.addStretch(1)
        return bubble

    def _update_buttons(self) -> None:
        """Regenerate is offered on the last answer only, once it is complete."""
        answers = [bubble for bubble in self.bubbles if bubble.footer]
        for bubble in answers:
            streaming = self._model.message(self.bubbles.index(bubble)).streaming
            bubble.regenerate_button.setVisible(bubble is answers[-1] and not streaming)

    def _bubble_width(self) -> int:
        return int(self.viewport().width() * BUBBLE_WIDTH_SHARE)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        for bubble in self.bubbles:
            bubble.set_max_width(self._bubble_width())
