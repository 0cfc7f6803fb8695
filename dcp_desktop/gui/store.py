"""Chat history: SQLite (WAL) plus a content-addressed image folder, safe against a killed process.

    history.sqlite3   chats, messages, the images each message carries and what the model kept of them
    images/<sha256><suffix>     the image file exactly as the user gave it (pastes are PNG)
    images/<sha256>.thumb.png   the thumbnail the window shows (decoded by load_image, EXIF applied)

Every message is written in one transaction, so a process killed at any moment leaves earlier chats
whole: WAL mode rolls an unfinished transaction back on the next open. Image files are written to a
temporary name and renamed into place before the message that refers to them is committed.
Not thread-safe: the window uses it from the GUI thread only (each write is one small transaction).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    method TEXT NOT NULL,
    n_keep INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    stats TEXT,                       -- JSON: the answer's timings and token counts
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    file_name TEXT NOT NULL,          -- in the images/ folder
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS message_images (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    sha256 TEXT NOT NULL REFERENCES images(sha256),
    selection TEXT,                   -- JSON: the kept patches (see overlay.Overlay.from_dict)
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages(chat_id, id);
"""


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    path: Path  # the original file in the store
    thumbnail: Path
    width: int
    height: int
    selection: dict | None = None  # what the model kept, once the image was sent


@dataclass(frozen=True)
class StoredMessage:
    id: int
    role: str  # "user" or "assistant"
    text: str
    images: list[StoredImage] = field(default_factory=list)
    stats: dict | None = None


@dataclass(frozen=True)
class ChatSummary:
    id: int
    title: str
    method: str
    n_keep: int
    updated: float


class Store:
    """The history database and image folder under `folder`. Close it, or use `with`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.images_dir = self.folder / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN ... COMMIT), never implicit.
        self.db = sqlite3.connect(self.folder / "history.sqlite3", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- chats ---------------------------------------------------------------------------------

    def create_chat(self, title: str, method: str, n_keep: int) -> int:
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO chats (title, method, n_keep, created, updated) VALUES (?, ?, ?, ?, ?)",
                                (title, method, n_keep, now, now))
        return int(cursor.lastrowid)

    def set_chat_options(self, chat_id: int, method: str, n_keep: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE chats SET method = ?, n_keep = ? WHERE id = ?", (method, n_keep, chat_id))

    def chats(self) -> list[ChatSummary]:
        """Every chat, the most recently used first."""
        rows = self.db.execute("SELECT id, title, method, n_keep, updated FROM chats ORDER BY updated DESC, id DESC")
        return [ChatSummary(*row) for row in rows]

    def chat(self, chat_id: int) -> ChatSummary | None:
        row = self.db.execute("SELECT id, title, method, n_keep, updated FROM chats WHERE id = ?",
                              (chat_id,)).fetchone()
        return ChatSummary(*row) if row else None

    def delete_chat(self, chat_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
        self._remove_unused_images()

    def clear(self) -> None:
        """Delete every chat and every stored image."""
        with self._transaction() as db:
            db.execute("DELETE FROM chats")
        self._remove_unused_images()

    # --- messages ------------------------------------------------------------------------------

    def add_message(self, chat_id: int, role: str, text: str, images: list[str] = (),
                    stats: dict | None = None) -> int:
        """Append a message (with the sha256 of each image it carries, already in the store)."""
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO messages (chat_id, role, text, stats, created) VALUES (?, ?, ?, ?, ?)",
                                (chat_id, role, text, _json(stats), now))
            message_id = int(cursor.lastrowid)
            db.executemany("INSERT INTO message_images (message_id, position, sha256) VALUES (?, ?, ?)",
                           [(message_id, position, sha) for position, sha in enumerate(images)])
            db.execute("UPDATE chats SET updated = ? WHERE id = ?", (now, chat_id))
        return message_id

    def delete_message(self, message_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def set_selection(self, chat_id: int, sha256: str, selection: dict) -> None:
        """Record what the model kept of an image, on every message of the chat that carries it."""
        with self._transaction() as db:
            db.execute("UPDATE message_images SET selection = ? WHERE sha256 = ? AND message_id IN "
                       "(SELECT id FROM messages WHERE chat_id = ?)", (_json(selection), sha256, chat_id))

    def messages(self, chat_id: int) -> list[StoredMessage]:
        rows = self.db.execute("SELECT id, role, text, stats FROM messages WHERE chat_id = ? ORDER BY id",
                               (chat_id,)).fetchall()
        return [StoredMessage(id, role, text, self._message_images(id), _unjson(stats))
                for id, role, text, stats in rows]

    def chat_images(self, chat_id: int) -> list[StoredImage]:
        """The chat's images in the order they were sent, each once."""
        seen: dict[str, StoredImage] = {}
        for message in self.messages(chat_id):
            for image in message.images:
                seen.setdefault(image.sha256, image)
        return list(seen.values())

    def _message_images(self, message_id: int) -> list[StoredImage]:
        rows = self.db.execute(
            "SELECT i.sha256, i.file_name, i.width, i.height, m.selection FROM message_images m "
            "JOIN images i USING (sha256) WHERE m.message_id = ? ORDER BY m.position", (message_id,))
        return [StoredImage(sha, self.images_dir / name, self.thumbnail_path(sha), width, height, _unjson(selection))
                for sha, name, width, height, selection in rows]

    # --- images --------------------------------------------------------------------------------

    def put_image(self, sha256: str, data: bytes, suffix: str, thumbnail_png: bytes,
                  width: int, height: int) -> StoredImage:
        """Store an image under its content hash (the same bytes a second time are not copied again)."""
        row = self.db.execute("SELECT file_name FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        file_name = row[0] if row else sha256 + (suffix.lower() if len(suffix) <= 6 else ".img")
        if row is None:
            _write_atomically(self.images_dir / file_name, data)  # on disk before the row that names it
            _write_atomically(self.thumbnail_path(sha256), thumbnail_png)
            with self._transaction() as db:
                db.execute("INSERT INTO images (sha256, file_name, width, height) VALUES (?, ?, ?, ?)",
                           (sha256, file_name, width, height))
        return StoredImage(sha256, self.images_dir / file_name, self.thumbnail_path(sha256), width, height)

    def thumbnail_path(self, sha256: str) -> Path:
        return self.images_dir / f"{sha256}.thumb.png"

    def _remove_unused_images(self) -> None:
        """Delete images no message refers to any more (after the deleting transaction committed)."""
        with self._transaction() as db:
            unused = db.execute("SELECT sha256, file_name FROM images WHERE sha256 NOT IN "
                                "(SELECT sha256 FROM message_images)").fetchall()
            db.executemany("DELETE FROM images WHERE sha256 = ?", [(sha,) for sha, _ in unused])
        for sha, file_name in unused:
            for path in (self.images_dir / file_name, self.thumbnail_path(sha)):
                path.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)


def _unjson(text: str | None):
    return None if text is None else json.loads(text)
