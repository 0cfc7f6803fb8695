"""The list models behind the window: the messages of the open chat, and the chats in the sidebar.

ChatModel rows are `Message`s. The answer being streamed grows one piece at a time through
`append_text`, which emits dataChanged for that row; the view decides how often to redraw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, Qt

from .store import ChatSummary

MESSAGE_ROLE = Qt.ItemDataRole.UserRole + 1
CHAT_ID_ROLE = Qt.ItemDataRole.UserRole + 2
_ROOT = QModelIndex()


@dataclass(frozen=True)
class ImageRef:
    """An image as a message shows it. `thumbnail` is a file path or PNG bytes (not yet stored)."""

    sha256: str
    thumbnail: str | bytes
    width: int
    height: int
    selection: dict | None = None  # what the model kept (overlay.Overlay.from_dict), once sent


@dataclass
class Message:
    role: str  # "user", "assistant" or "notice" (an error or hint shown in the chat, never stored)
    text: str
    images: list[ImageRef] = field(default_factory=list)
    stats: dict | None = None  # an answer's timings and token counts, once it is complete
    streaming: bool = False
    message_id: int | None = None  # the row in the store


class ChatModel(QAbstractListModel):
    """The messages of the open chat, oldest first."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._messages: list[Message] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._messages)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self._messages):
            return None
        message = self._messages[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return message.text
        if role == MESSAGE_ROLE:
            return message
        return None

    def message(self, row: int) -> Message:
        return self._messages[row]

    def messages(self) -> list[Message]:
        return list(self._messages)

    def set_messages(self, messages: list[Message]) -> None:
        self.beginResetModel()
        self._messages = list(messages)
        self.endResetModel()

    def append(self, message: Message) -> int:
        row = len(self._messages)
        self.beginInsertRows(_ROOT, row, row)
        self._messages.append(message)
        self.endInsertRows()
        return row

    def remove(self, row: int) -> None:
        self.beginRemoveRows(_ROOT, row, row)
        del self._messages[row]
        self.endRemoveRows()

    def append_text(self, row: int, piece: str) -> None:
        self._messages[row].text += piece
        self._changed(row)

    def finish(self, row: int, stats: dict | None, message_id: int | None) -> None:
        message = self._messages[row]
        message.stats, message.message_id, message.streaming = stats, message_id, False
        self._changed(row)

    def set_selection(self, sha256: str, selection: dict) -> None:
        """Show what the model kept of an image on every message that carries it."""
        for row, message in enumerate(self._messages):
            if any(image.sha256 == sha256 for image in message.images):
                message.images = [replace(image, selection=selection) if image.sha256 == sha256 else image
                                  for image in message.images]
                self._changed(row)

    def last_row(self, role: str) -> int | None:
        for row in range(len(self._messages) - 1, -1, -1):
            if self._messages[row].role == role:
                return row
        return None

    def _changed(self, row: int) -> None:
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DisplayRole, MESSAGE_ROLE])


class ChatListModel(QAbstractListModel):
    """The sidebar: saved chats, the most recent first (display: the title; CHAT_ID_ROLE: the id)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._chats: list[ChatSummary] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._chats)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self._chats):
            return None
        chat = self._chats[index.row()]
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            return chat.title
        if role == CHAT_ID_ROLE:
            return chat.id
        return None

    def set_chats(self, chats: list[ChatSummary]) -> None:
        self.beginResetModel()
        self._chats = list(chats)
        self.endResetModel()

    def row_of(self, chat_id: int | None) -> int | None:
        return next((row for row, chat in enumerate(self._chats) if chat.id == chat_id), None)
