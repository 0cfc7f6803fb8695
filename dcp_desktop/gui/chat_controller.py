"""What the window does, without a widget: chats, attachments, asking, the model being used.

The controller owns the Store, the Qt models (ChatModel, ChatListModel) and an EngineClient (whose worker
thread owns the Pipeline). The window (window.py) shows what the controller holds and forwards what the
user does; tests drive the controller directly. Nothing here waits on the engine: requests go out as
queued signals, and answers, tokens and errors come back as signals. Every error becomes a notice in the
conversation.

Asking again in a chat reopened from the sidebar re-sends all of its images with the question (the
model's memory of a chat does not survive a restart); earlier answers stay on screen only.

On a first start (no model picked yet) the controller loads the model bundled with the package, so the
app works with no download; that model knows only the synthetic shapes of dcp_desktop.scenes. If the
install lost its files, `start_problem` says so.
"""

from __future__ import annotations

import io
import itertools
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from .. import models, scenes
from ..engine import GenerationParams
from ..pipeline import PipelineOptions
from .chat_model import ChatListModel, ChatModel, ImageRef, Message
from .settings import Settings
from .store import StoredImage, StoredMessage, Store
from .worker import Answer, AskRequest, EngineClient, ModelRequest, PreparedImage

TITLE_CHARS = 60


@dataclass
class Attachment:
    """An image waiting to go with the next question."""

    key: str
    name: str  # the file name, or "pasted image"
    prepared: PreparedImage | None = None  # None while the worker reads it


@dataclass
class Answering:
    """The answer being streamed: its chat, its row while that chat is on screen, its text so far."""

    chat_id: int
    row: int | None
    text: str = ""


class ChatController(QObject):
    state_changed = Signal()  # the model's state, the chat or its messages changed: redraw the page
    chats_changed = Signal()  # the sidebar's list or its selection changed
    notice = Signal(str, int)  # a status line and how long to show it (ms)
    pruning_shown = Signal(str, int)  # the chat on screen uses this method and budget
    attachment_added = Signal(object)  # Attachment
    attachment_ready = Signal(str, object)  # key, PreparedImage
    attachment_removed = Signal(str)  # key
    generating = Signal(bool)  # an answer is streaming (or not any more)
    draft = Signal(str)  # a question to put in the composer for the user to send

    def __init__(self, settings: Settings, store: Store, parent=None):
        super().__init__(parent)
        self.settings, self.store = settings, store
        self.engine = EngineClient(self)
        self.chat_model = ChatModel(self)
        self.chat_list = ChatListModel(self)
        self.chat_id: int | None = None
        self.method, self.n_keep = settings.method, settings.n_keep  # the chat on screen's pruning
        self.temperature, self.max_tokens = settings.temperature, settings.max_tokens
        self.model_files: tuple[str, str | None] | None = None  # what the engine was asked to load
        self.model_name: str | None = None  # set once it has loaded
        self.start_problem: str | None = None  # why the bundled model was not loaded on a first start
        self.attachments: dict[str, Attachment] = {}
        self.answering: Answering | None = None
        self._keys = itertools.count()
        worker = self.engine.worker
        worker.model_loaded.connect(self._on_model_loaded)
        worker.model_failed.connect(self._on_model_failed)
        worker.image_ready.connect(self._on_image_ready)
        worker.image_failed.connect(self._on_image_failed)
        worker.token.connect(self._on_token)
        worker.answer_done.connect(self._on_answer_done)
        worker.answer_failed.connect(self._on_answer_failed)
        worker.status.connect(self._on_status)  # a bound method: queued to the GUI thread (a lambda is not)

    # --- the model -----------------------------------------------------------------------------

    def model_state(self) -> str:
        """"none", "loading", "ready", or "demo" (the bundled model is ready)."""
        if self.model_name:
            return "demo" if self.model_files[0] in models.BUNDLED else "ready"
        return "loading" if self.model_files else "none"

    def load_first_model(self) -> None:
        """The model picked last; on a first start the bundled one, which needs no download."""
        if self.settings.model:
            self.load_model(self.settings.model, self.settings.mmproj)
            return
        bundled = next(iter(models.BUNDLED.values()), None)
        if bundled is None:
            return
        missing = bundled.missing_files()
        if missing:  # a broken install: say so where the user looks, and offer Models…
            self.start_problem = (f"The built-in {bundled.name} model is missing from this installation "
                                  f"({', '.join(map(str, missing))} not found): reinstall dcp-desktop, "
                                  "or choose a model in Models…")
            self.notice.emit(self.start_problem, 10000)
            self.state_changed.emit()
            return
        self.load_model(bundled.name)

    def load_model(self, model: str, mmproj: str | None = None) -> None:
        """Ask the worker for this model; the pick is remembered once it has loaded."""
        self.model_files, self.model_name = (model, mmproj), None
        self.start_problem = None
        self.state_changed.emit()
        self.engine.configure(self._model_request())

    def reload(self) -> None:
        """Load the current model again (the hardware settings changed)."""
        if self.model_files:
            self.load_model(*self.model_files)

    def _model_request(self) -> ModelRequest:
        options = PipelineOptions(method=self.method, n_keep=self.n_keep, n_threads=self.settings.n_threads or None,
                                  n_gpu_layers=None if self.settings.n_gpu_layers < 0 else self.settings.n_gpu_layers)
        return ModelRequest(*self.model_files, options)

    def _on_model_loaded(self, request: ModelRequest, name: str) -> None:
        if (request.model, request.mmproj) != self.model_files:
            return  # an earlier pick finished loading after the user chose another
        self.model_name = name
        self.settings.model, self.settings.mmproj = request.model, request.mmproj
        self.state_changed.emit()

    def _on_model_failed(self, request: ModelRequest, message: str) -> None:
        if (request.model, request.mmproj) != self.model_files:
            return
        self.model_files = self.model_name = None
        self.show_error(message)

    def set_pruning(self, method: str, n_keep: int) -> None:
        """The user picked a method or budget: the default for new chats, and this chat's from its next
        question on (the worker applies it without reloading; the chat's images are re-read)."""
        self.method, self.n_keep = method, n_keep
        self.settings.method, self.settings.n_keep = method, n_keep
        if self.chat_id is not None:
            self.store.set_chat_options(self.chat_id, method, n_keep)
        self._reconfigure()
        self.notice.emit(f"{method}, {n_keep} image tokens: from the next question on "
                         "(the model re-reads this chat's images)", 8000)

    def set_generation(self, temperature: float, max_tokens: int) -> None:
        self.temperature = self.settings.temperature = temperature
        self.max_tokens = self.settings.max_tokens = max_tokens

    def _show_pruning(self, method: str, n_keep: int) -> None:
        """Use a chat's own method and budget (the controls follow)."""
        self.method, self.n_keep = method, n_keep
        self.pruning_shown.emit(method, n_keep)
        self._reconfigure()

    def _reconfigure(self) -> None:
        if self.model_files:
            self.engine.configure(self._model_request())

    def _on_status(self, text: str) -> None:
        self.notice.emit(text, 5000)

    def show_error(self, message: str) -> None:
        """An error as a notice in the conversation (never stored) and in the status bar."""
        self.chat_model.append(Message("notice", message))
        self.notice.emit(message, 10000)
        self.state_changed.emit()

    # --- attachments ---------------------------------------------------------------------------

    def attach(self, sources: list, names: list[str] | None = None) -> None:
        """Attach images (file paths or encoded bytes) to the next question."""
        for source, name in zip(sources, names or [display_name(s) for s in sources]):
            attachment = Attachment(f"image-{next(self._keys)}", name)
            self.attachments[attachment.key] = attachment
            self.attachment_added.emit(attachment)
            self.engine.prepare_image(attachment.key, source)

    def remove_attachment(self, key: str) -> None:
        self.attachments.pop(key, None)
        self.attachment_removed.emit(key)

    def try_sample_scene(self) -> None:
        """Attach a fresh synthetic scene, the kind of image the demo model knows, and offer one of its
        questions as a draft for the user to send (or edit)."""
        seed = random.randrange(scenes.SET_STRIDE)  # the train range: never a validation or test image
        png = io.BytesIO()
        scenes.render_scene(seed)[0].save(png, format="PNG")
        for key in list(self.attachments):  # the question is about this scene alone
            self.remove_attachment(key)
        self.attach([png.getvalue()], [f"scene {seed}.png"])
        self.draft.emit(scenes.questions_about(seed, 1)[0].question)

    def _on_image_ready(self, prepared: PreparedImage) -> None:
        attachment = self.attachments.get(prepared.key)
        if attachment is not None:  # else removed while it was being read
            attachment.prepared = prepared
            self.attachment_ready.emit(prepared.key, prepared)

    def _on_image_failed(self, key: str, message: str) -> None:
        self.remove_attachment(key)
        self.show_error(message)

    # --- asking --------------------------------------------------------------------------------

    def can_send(self) -> bool:
        """Whether a question may go now; says why not in the status line or the conversation."""
        if self.answering is not None:
            return False
        if not self.model_files:
            self.show_error("No model is loaded: choose one in Models… first.")
            return False
        if any(a.prepared is None for a in self.attachments.values()):
            self.notice.emit("Still reading an image; send again in a moment", 5000)
            return False
        return True

    def send(self, question: str) -> None:
        """Store the question with the attached images, show it and ask the model (see can_send)."""
        if self.chat_id is None:
            self.chat_id = self.store.create_chat(question[:TITLE_CHARS], self.method, self.n_keep)
        images = [self._store_image(attachment) for attachment in self.attachments.values()]
        message_id = self.store.add_message(self.chat_id, "user", question, [image.sha256 for image in images])
        for key in list(self.attachments):
            self.remove_attachment(key)
        self.chat_model.append(Message("user", question, [_image_ref(image) for image in images],
                                       message_id=message_id))
        self.chats_changed.emit()
        self.state_changed.emit()
        self._ask(question, fresh=False)

    def _store_image(self, attachment: Attachment) -> StoredImage:
        prepared = attachment.prepared
        suffix = Path(attachment.name).suffix or ".png"  # pastes are PNG bytes
        return self.store.put_image(prepared.sha256, prepared.data, suffix, prepared.thumbnail_png,
                                    prepared.width, prepared.height)

    def _ask(self, question: str, fresh: bool) -> None:
        images = tuple((image.sha256, str(image.path)) for image in self.store.chat_images(self.chat_id))
        row = self.chat_model.append(Message("assistant", "", streaming=True))
        self.answering = Answering(self.chat_id, row)
        self.generating.emit(True)
        seed = secrets.randbelow(2**31) if fresh else 0  # a regenerated answer may differ (temperature > 0)
        params = GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=seed)
        self.engine.ask(AskRequest(self.chat_id, question, images, params, fresh))

    def stop(self) -> None:
        if self.answering is not None:
            self.engine.stop()

    def _on_token(self, piece: str) -> None:
        if self.answering is not None:
            self.answering.text += piece
            if self.answering.row is not None:
                self.chat_model.append_text(self.answering.row, piece)

    def _on_answer_done(self, answer: Answer) -> None:
        """Store the answer in its chat (also when another chat is on screen now) and show its stats."""
        answering, self.answering = self.answering, None
        self.generating.emit(False)
        if answering is None or self.store.chat(answering.chat_id) is None:
            return  # the chat was deleted while it was answering
        message_id = self.store.add_message(answering.chat_id, "assistant", answering.text, stats=answer.stats)
        for sha, overlay in answer.overlays.items():
            self.store.set_selection(answering.chat_id, sha, overlay)
            if answering.row is not None:
                self.chat_model.set_selection(sha, overlay)
        if answering.row is not None:
            self.chat_model.finish(answering.row, answer.stats, message_id)
        self.chats_changed.emit()

    def _on_answer_failed(self, message: str) -> None:
        answering, self.answering = self.answering, None
        self.generating.emit(False)
        if answering is not None and answering.row is not None:
            if self.chat_model.message(answering.row).text:
                self.chat_model.finish(answering.row, None, None)
            else:
                self.chat_model.remove(answering.row)
        self.show_error(message)

    def regenerate(self, row: int | None) -> None:
        """Answer the last question again, from a fresh conversation with all of the chat's images."""
        if self.answering is not None or row is None or row != self.chat_model.last_row("assistant"):
            return
        question_row = self.chat_model.last_row("user")
        if question_row is None:
            return
        answer = self.chat_model.message(row)
        if answer.message_id is not None:
            self.store.delete_message(answer.message_id)
        self.chat_model.remove(row)
        self._ask(self.chat_model.message(question_row).text, fresh=True)

    # --- chats ---------------------------------------------------------------------------------

    def new_chat(self) -> None:
        self._leave_chat()
        self.chat_id = None
        self.chat_model.set_messages([])
        self._show_pruning(self.settings.method, self.settings.n_keep)
        self.chats_changed.emit()
        self.state_changed.emit()

    def open_chat(self, chat_id: int) -> None:
        chat = self.store.chat(chat_id)
        if chat is None or chat_id == self.chat_id:
            return
        self._leave_chat()
        self.chat_id = chat_id
        self.chat_model.set_messages([_message(stored) for stored in self.store.messages(chat_id)])
        self._show_pruning(chat.method, chat.n_keep)
        self.chats_changed.emit()
        self.state_changed.emit()

    def _leave_chat(self) -> None:
        """Stop an answer in progress; what it said so far is still saved to its chat."""
        if self.answering is not None:
            self.engine.stop()
            self.answering.row = None

    def delete_chat(self, chat_id: int) -> None:
        if self.answering is not None and self.answering.chat_id == chat_id:
            self.stop()
        self.store.delete_chat(chat_id)
        if chat_id == self.chat_id:
            self.new_chat()
        self.chats_changed.emit()

    def clear_history(self) -> None:
        self.stop()
        self.store.clear()
        self.new_chat()

    def refresh_chat_list(self) -> None:
        self.chat_list.set_chats(self.store.chats())

    def shutdown(self) -> None:
        """Stop the answer and end the worker thread (quit, wait); the store stays open for what the
        worker said last (the window saves it, then closes the store)."""
        self.engine.shutdown()


def display_name(source: str | bytes) -> str:
    return "pasted image" if isinstance(source, bytes) else Path(source).name


def _image_ref(image: StoredImage) -> ImageRef:
    return ImageRef(image.sha256, str(image.thumbnail), image.width, image.height, image.selection)


def _message(stored: StoredMessage) -> Message:
    return Message(stored.role, stored.text, [_image_ref(image) for image in stored.images], stored.stats,
                   message_id=stored.id)
