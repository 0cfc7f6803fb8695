"""The main window: sidebar of chats, model bar, chat controls, the conversation and the composer.

The window owns the Store and the models (GUI thread) and an EngineClient (the worker thread owns
the Pipeline). It never waits on the engine: requests go out as queued signals, and the answers,
tokens and errors come back as signals. Every error becomes a notice in the conversation.

Asking again in a chat reopened from the sidebar re-sends all of its images with the question
(the model's memory of a chat does not survive a restart); earlier answers stay on screen only.

On a first start (no model picked yet) the window loads the model bundled with the package, so the app
works with no download; that model knows only the synthetic shapes of dcp_desktop.scenes, and the
empty chat offers a sample scene to ask about. If the install lost its files, the empty chat says so
under "Pick a model to start" (a notice would replace that page).
"""

from __future__ import annotations

import io
import itertools
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEvent, Qt
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QListView, QMainWindow, QMenu, QMessageBox,
                               QPushButton, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from .. import models
from ..engine import GenerationParams
from .. import scenes
from ..pipeline import PipelineOptions
from .chat_model import CHAT_ID_ROLE, ChatListModel, ChatModel, ImageRef, Message
from .chat_view import ChatView
from .composer import Attachment, Composer, display_name, sources_from_mime
from .controls import ChatControls
from .models_dialog import ModelsDialog
from .settings import Settings, data_dir
from .settings_dialog import SettingsDialog
from .store import StoredImage, StoredMessage, Store
from .worker import Answer, AskRequest, EngineClient, ModelRequest, PreparedImage

TITLE_CHARS = 60
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"


@dataclass
class _Answering:
    """The answer being streamed: its chat, its row while that chat is on screen, its text so far."""

    chat_id: int
    row: int | None
    text: str = ""


class EmptyState(QWidget):
    """What an empty chat shows: how to start, or that a model is needed first (and why, if the
    bundled model could not be used)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel(self)
        self.title.setStyleSheet("font-size: 18pt; font-weight: 600;")
        self.body = QLabel(self)
        self.body.setWordWrap(True)
        self.body.setFixedWidth(520)  # a fixed width lets the wrapped text take the height it needs
        self.body.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        self.problem = QLabel(self)
        self.problem.setWordWrap(True)
        self.problem.setFixedWidth(520)
        self.problem.setStyleSheet("color: #d03030;")
        self.sample_button = QPushButton("Try a sample scene", self)
        self.models_button = QPushButton("Choose a model…", self)
        column = QVBoxLayout(self)
        column.addStretch(1)
        for widget in (self.title, self.body, self.problem, self.sample_button, self.models_button):
            row = QHBoxLayout()  # centred by stretches: an aligned item would ignore the wrapped height
            row.addStretch(1)
            row.addWidget(widget)
            row.addStretch(1)
            column.addLayout(row)
        column.addStretch(2)

    def show_state(self, model_state: str, problem: str | None = None) -> None:
        """model_state: "none", "loading", "ready" or "demo" (the bundled model is ready)."""
        texts = {
            "none": ("Pick a model to start",
                     "dcp-desktop answers questions about your photos, screenshots and documents on this "
                     "computer; nothing leaves it. Open LLaVA GGUF files you have, or download one once "
                     "(about 4.7 GB)."),
            "loading": ("Loading the model…", "This takes a moment; you can attach images meanwhile."),
            "ready": ("Ask about an image",
                      "Drop an image here, paste one (Ctrl+V) or open one (Ctrl+O), then type a question. "
                      "Each image costs the model 16 tokens instead of 576: “What the model sees” under an "
                      "image shows which parts it kept."),
            "demo": ("Try the demo model",
                     "The built-in demo model is tiny: it knows only coloured shapes (circles, squares, "
                     "triangles, stars, hexagons and crosses in eight colours) on textured backgrounds, "
                     "and nothing about photos. Try a sample scene and ask about it. For your own photos, "
                     "screenshots and documents, choose a LLaVA model in Models…"),
        }
        title, body = texts[model_state]
        self.title.setText(title)
        self.body.setText(body)
        self.problem.setText(problem or "")
        self.problem.setVisible(bool(problem))
        self.sample_button.setVisible(model_state == "demo")
        self.models_button.setVisible(model_state in ("none", "demo"))


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, store: Store | None = None):
        super().__init__()
        self.setWindowTitle("dcp-desktop")
        self.settings = settings or Settings()
        self.store = store or Store(data_dir())
        self.engine = EngineClient(self)
        self.chat_model = ChatModel(self)
        self.chat_list = ChatListModel(self)
        self.chat_id: int | None = None
        self.model_files: tuple[str, str | None] | None = None  # what the engine was asked to load
        self.model_name: str | None = None  # set once it has loaded
        self.start_problem: str | None = None  # why the bundled model was not loaded on a first start
        self.attachments: dict[str, Attachment] = {}
        self.answering: _Answering | None = None
        self.models_dialog: ModelsDialog | None = None
        self._keys = itertools.count()
        self._build()
        self._build_menus()
        self._connect_engine()
        self._restore_geometry()
        self.refresh_chat_list()
        self._update_page()
        self._load_first_model()

    # --- layout --------------------------------------------------------------------------------

    def _build(self) -> None:
        main = QWidget(self)
        column = QVBoxLayout(main)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self._model_bar())
        column.addWidget(self._controls())
        column.addWidget(self._pages(), 1)
        column.addWidget(self._composer())
        self.splitter = QSplitter(self)
        self.splitter.addWidget(self._sidebar())
        self.splitter.addWidget(main)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([220, 900])
        self.setCentralWidget(self.splitter)
        self.setAcceptDrops(True)
        self.resize(1180, 800)

    def _pages(self) -> QWidget:
        """The conversation, or, while it is empty, how to start."""
        self.chat_view = ChatView(self)
        self.chat_view.set_model(self.chat_model)
        self.chat_view.copy_requested.connect(self.copy_answer)
        self.chat_view.regenerate_requested.connect(self.regenerate)
        self.empty_state = EmptyState(self)
        self.empty_state.models_button.clicked.connect(self.show_models)
        self.empty_state.sample_button.clicked.connect(self.try_sample_scene)
        self.pages = QStackedWidget(self)
        self.pages.addWidget(self.empty_state)
        self.pages.addWidget(self.chat_view)
        return self.pages

    def _controls(self) -> QWidget:
        self.controls = ChatControls(self)
        self.controls.set_pruning(self.settings.method, self.settings.n_keep)
        self.controls.temperature.setValue(self.settings.temperature)
        self.controls.max_tokens.setValue(self.settings.max_tokens)
        self.controls.pruning_changed.connect(self._on_pruning_changed)
        self.controls.generation_changed.connect(self._on_generation_changed)
        return self.controls

    def _composer(self) -> QWidget:
        self.composer = Composer(self)
        self.composer.send_clicked.connect(self.send)
        self.composer.stop_clicked.connect(self.stop)
        self.composer.attach_clicked.connect(self.open_images)
        self.composer.attachment_removed.connect(self.remove_attachment)
        self.composer.input.images_pasted.connect(self.attach)
        return self.composer

    def _model_bar(self) -> QWidget:
        bar = QWidget(self)
        row = QHBoxLayout(bar)
        row.setContentsMargins(8, 6, 8, 0)
        self.model_label = QLabel(bar)
        row.addWidget(self.model_label, 1)
        row.addWidget(QPushButton("Models…", bar, clicked=self.show_models))
        row.addWidget(QPushButton("Settings…", bar, clicked=self.show_settings))
        self._show_model_state()
        return bar

    def _sidebar(self) -> QWidget:
        sidebar = QWidget(self)
        column = QVBoxLayout(sidebar)
        column.setContentsMargins(8, 8, 0, 8)
        column.addWidget(QPushButton("New chat", sidebar, clicked=self.new_chat))
        self.chat_list_view = QListView(sidebar)
        self.chat_list_view.setModel(self.chat_list)
        self.chat_list_view.setEditTriggers(QListView.EditTrigger.NoEditTriggers)
        self.chat_list_view.clicked.connect(self._open_chat_at)
        self.chat_list_view.activated.connect(self._open_chat_at)  # Enter on a chat
        self.chat_list_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.chat_list_view.customContextMenuRequested.connect(self._chat_menu)
        column.addWidget(self.chat_list_view, 1)
        return sidebar

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        chat_menu = self.menuBar().addMenu("&Chat")
        self._action(file_menu, "&New chat", self.new_chat, QKeySequence.StandardKey.New)
        self._action(file_menu, "&Open image…", self.open_images, QKeySequence.StandardKey.Open)
        self._action(file_menu, "&Paste image", self.paste_image, QKeySequence.StandardKey.Paste)
        file_menu.addSeparator()
        self._action(file_menu, "&Models…", self.show_models)
        self._action(file_menu, "&Settings…", self.show_settings)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self._action(chat_menu, "&Stop answer", self.stop, QKeySequence(Qt.Key.Key_Escape))
        self._action(chat_menu, "&Regenerate answer", lambda: self.regenerate(self.chat_model.last_row("assistant")))
        self._action(chat_menu, "&Delete chat", self._confirm_delete_chat)
        self._action(chat_menu, "&Clear history…", self._confirm_clear_history)

    def _action(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _update_page(self) -> None:
        self.pages.setCurrentWidget(self.chat_view if self.chat_model.rowCount() else self.empty_state)
        self.empty_state.show_state(self._model_state(), self.start_problem)

    def _model_state(self) -> str:
        if self.model_name:
            return "demo" if self.model_files[0] in models.BUNDLED else "ready"
        return "loading" if self.model_files else "none"

    def _show_model_state(self) -> None:
        state = self._model_state()
        text = {"ready": f"Model: <b>{self.model_name}</b>",
                "demo": f"Model: <b>{self.model_name}</b> (built in; coloured shapes only)",
                "loading": f"Loading {self.model_files[0] if self.model_files else ''} …",
                "none": "No model yet: choose one in <b>Models…</b>"}[state]
        self.model_label.setText(text)

    # --- model ---------------------------------------------------------------------------------

    def _load_first_model(self) -> None:
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
            self.statusBar().showMessage(self.start_problem, 10000)
            self._update_page()
            return
        self.load_model(bundled.name)

    def load_model(self, model: str, mmproj: str | None = None) -> None:
        """Ask the worker for this model; the pick is remembered once it has loaded."""
        self.model_files, self.model_name = (model, mmproj), None
        self.start_problem = None
        self._show_model_state()
        self._update_page()
        self.engine.configure(self._model_request())

    def _model_request(self) -> ModelRequest:
        method, n_keep = self.controls.pruning()
        options = PipelineOptions(method=method, n_keep=n_keep, n_threads=self.settings.n_threads or None,
                                  n_gpu_layers=self.settings.n_gpu_layers)
        return ModelRequest(*self.model_files, options)

    def _on_model_loaded(self, request: ModelRequest, name: str) -> None:
        if (request.model, request.mmproj) != self.model_files:
            return  # an earlier pick finished loading after the user chose another
        self.model_name = name
        self.settings.model, self.settings.mmproj = request.model, request.mmproj
        self._show_model_state()
        self._update_page()
        if self.models_dialog is not None:
            self.models_dialog.set_current(name)

    def _on_model_failed(self, request: ModelRequest, message: str) -> None:
        if (request.model, request.mmproj) != self.model_files:
            return
        self.model_files = self.model_name = None
        self._show_model_state()
        self.show_error(message)

    def show_models(self) -> None:
        if self.models_dialog is None:  # one dialog for the app's life: downloads go on while it is hidden
            self.models_dialog = ModelsDialog(self.model_name, self)
            self.models_dialog.model_chosen.connect(self.load_model)
        self.models_dialog.show()
        self.models_dialog.raise_()

    def show_settings(self) -> None:
        if SettingsDialog(self.settings, self).exec() and self.model_files:
            self.load_model(*self.model_files)  # hardware settings need a reload

    def _on_pruning_changed(self) -> None:
        method, n_keep = self.controls.pruning()
        self.settings.method, self.settings.n_keep = method, n_keep  # the default for new chats
        if self.chat_id is not None:
            self.store.set_chat_options(self.chat_id, method, n_keep)
        self._reconfigure()
        self.statusBar().showMessage(f"{method}, {n_keep} image tokens: from the next question on "
                                     "(the model re-reads this chat's images)", 8000)

    def _reconfigure(self) -> None:
        """Tell the worker the method and budget on screen; it rebuilds before the next image."""
        if self.model_files:
            self.engine.configure(self._model_request())

    def _on_generation_changed(self) -> None:
        self.settings.temperature = self.controls.temperature.value()
        self.settings.max_tokens = self.controls.max_tokens.value()

    def _generation_params(self, fresh: bool) -> GenerationParams:
        seed = secrets.randbelow(2**31) if fresh else 0  # a regenerated answer may differ (temperature > 0)
        return GenerationParams(max_tokens=self.controls.max_tokens.value(),
                                temperature=self.controls.temperature.value(), seed=seed)

    # --- engine signals ------------------------------------------------------------------------

    def _connect_engine(self) -> None:
        worker = self.engine.worker
        worker.model_loaded.connect(self._on_model_loaded)
        worker.model_failed.connect(self._on_model_failed)
        worker.image_ready.connect(self._on_image_ready)
        worker.image_failed.connect(self._on_image_failed)
        worker.token.connect(self._on_token)
        worker.answer_done.connect(self._on_answer_done)
        worker.answer_failed.connect(self._on_answer_failed)
        worker.status.connect(self._show_status)  # a bound method: queued to the GUI thread (a lambda is not)

    def _show_status(self, text: str) -> None:
        self.statusBar().showMessage(text, 5000)

    def show_error(self, message: str) -> None:
        """An error as a notice in the conversation (never stored) and in the status bar."""
        self.chat_model.append(Message("notice", message))
        self.statusBar().showMessage(message, 10000)
        self._update_page()

    # --- images --------------------------------------------------------------------------------

    def attach(self, sources: list) -> None:
        """Attach images (file paths or encoded bytes) to the next question."""
        for source in sources:
            self._attach_as(source, display_name(source))

    def _attach_as(self, source: str | bytes, name: str) -> None:
        attachment = Attachment(f"image-{next(self._keys)}", name)
        self.attachments[attachment.key] = attachment
        self.composer.add_attachment(attachment)
        self.engine.prepare_image(attachment.key, source)

    def try_sample_scene(self) -> None:
        """Attach a fresh synthetic scene, the kind of image the demo model knows, and put one of its
        questions in the composer for the user to send (or edit)."""
        seed = random.randrange(scenes.SET_STRIDE)  # the train range: never a validation or test image
        image = scenes.render_scene(seed)[0]
        question = scenes.questions_about(seed, 1)[0]
        for key in list(self.attachments):  # the question is about this scene alone
            self.remove_attachment(key)
        png = io.BytesIO()
        image.save(png, format="PNG")
        self._attach_as(png.getvalue(), f"scene {seed}.png")
        self.composer.input.setPlainText(question.question)
        self.composer.input.setFocus()

    def open_images(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Attach images", "", IMAGE_FILTER)
        self.attach(paths)

    def paste_image(self) -> None:
        sources = sources_from_mime(QGuiApplication.clipboard().mimeData())
        if sources:
            self.attach(sources)
        else:
            self.statusBar().showMessage("The clipboard holds no image", 5000)

    def remove_attachment(self, key: str) -> None:
        self.attachments.pop(key, None)
        self.composer.remove_attachment(key)

    def _on_image_ready(self, prepared: PreparedImage) -> None:
        attachment = self.attachments.get(prepared.key)
        if attachment is not None:  # else removed while it was being read
            attachment.prepared = prepared
            self.composer.attachment_ready(prepared.key, prepared)

    def _on_image_failed(self, key: str, message: str) -> None:
        self.remove_attachment(key)
        self.show_error(message)

    def dragEnterEvent(self, event) -> None:
        if sources_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.attach(sources_from_mime(event.mimeData()))
        event.acceptProposedAction()

    # --- asking --------------------------------------------------------------------------------

    def send(self) -> None:
        question = self.composer.input.toPlainText().strip()
        if self.answering is not None or not question:
            return
        if not self.model_files:
            self.show_error("No model is loaded: choose one in Models… first.")
            return
        if any(a.prepared is None for a in self.attachments.values()):
            self.statusBar().showMessage("Still reading an image; send again in a moment", 5000)
            return
        self.composer.take_text()
        self._add_user_message(question)
        self._ask(question, fresh=False)

    def _add_user_message(self, question: str) -> None:
        """Store the question and its images (one transaction for the message) and show it."""
        if self.chat_id is None:
            method, n_keep = self.controls.pruning()
            self.chat_id = self.store.create_chat(question[:TITLE_CHARS], method, n_keep)
        images = [self._store_image(attachment) for attachment in self.attachments.values()]
        message_id = self.store.add_message(self.chat_id, "user", question, [image.sha256 for image in images])
        for key in list(self.attachments):
            self.remove_attachment(key)
        self.chat_model.append(Message("user", question, [_image_ref(image) for image in images],
                                       message_id=message_id))
        self.refresh_chat_list()
        self._update_page()

    def _store_image(self, attachment: Attachment) -> StoredImage:
        prepared = attachment.prepared
        suffix = Path(attachment.name).suffix or ".png"  # pastes are PNG bytes
        return self.store.put_image(prepared.sha256, prepared.data, suffix, prepared.thumbnail_png,
                                    prepared.width, prepared.height)

    def _ask(self, question: str, fresh: bool) -> None:
        images = tuple((image.sha256, str(image.path)) for image in self.store.chat_images(self.chat_id))
        row = self.chat_model.append(Message("assistant", "", streaming=True))
        self.answering = _Answering(self.chat_id, row)
        self.composer.set_generating(True)
        self.engine.ask(AskRequest(self.chat_id, question, images, self._generation_params(fresh), fresh))

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
        self.composer.set_generating(False)
        if answering is None or self.store.chat(answering.chat_id) is None:
            return  # the chat was deleted while it was answering
        message_id = self.store.add_message(answering.chat_id, "assistant", answering.text, stats=answer.stats)
        for sha, overlay in answer.overlays.items():
            self.store.set_selection(answering.chat_id, sha, overlay)
            if answering.row is not None:
                self.chat_model.set_selection(sha, overlay)
        if answering.row is not None:
            self.chat_model.finish(answering.row, answer.stats, message_id)
        self.refresh_chat_list()

    def _on_answer_failed(self, message: str) -> None:
        answering, self.answering = self.answering, None
        self.composer.set_generating(False)
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

    def copy_answer(self, row: int) -> None:
        QGuiApplication.clipboard().setText(self.chat_model.message(row).text)
        self.statusBar().showMessage("Answer copied", 3000)

    # --- chats ---------------------------------------------------------------------------------

    def new_chat(self) -> None:
        self._leave_chat()
        self.chat_id = None
        self.chat_model.set_messages([])
        self.controls.set_pruning(self.settings.method, self.settings.n_keep)
        self._reconfigure()
        self.chat_list_view.clearSelection()
        self._update_page()

    def open_chat(self, chat_id: int) -> None:
        chat = self.store.chat(chat_id)
        if chat is None or chat_id == self.chat_id:
            return
        self._leave_chat()
        self.chat_id = chat_id
        self.chat_model.set_messages([_message(stored) for stored in self.store.messages(chat_id)])
        self.controls.set_pruning(chat.method, chat.n_keep)
        self._reconfigure()
        self._select_in_sidebar()
        self._update_page()

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
        self.refresh_chat_list()

    def clear_history(self) -> None:
        self.stop()
        self.store.clear()
        self.new_chat()
        self.refresh_chat_list()

    def refresh_chat_list(self) -> None:
        self.chat_list.set_chats(self.store.chats())
        self._select_in_sidebar()

    def _select_in_sidebar(self) -> None:
        row = self.chat_list.row_of(self.chat_id)
        if row is None:
            self.chat_list_view.clearSelection()
        else:
            self.chat_list_view.setCurrentIndex(self.chat_list.index(row))

    def _open_chat_at(self, index) -> None:
        self.open_chat(index.data(CHAT_ID_ROLE))

    def _chat_menu(self, position) -> None:
        index = self.chat_list_view.indexAt(position)
        if index.isValid():
            menu = QMenu(self)
            menu.addAction("Delete chat", lambda: self._confirm_delete_chat(index.data(CHAT_ID_ROLE)))
            menu.exec(self.chat_list_view.viewport().mapToGlobal(position))

    def _confirm_delete_chat(self, chat_id: int | None = None) -> None:
        chat_id = self.chat_id if chat_id is None else chat_id
        if chat_id is not None and _confirmed(self, "Delete this chat and its images?"):
            self.delete_chat(chat_id)

    def _confirm_clear_history(self) -> None:
        if _confirmed(self, "Delete every chat and every stored image? This cannot be undone."):
            self.clear_history()

    # --- lifetime ------------------------------------------------------------------------------

    def _restore_geometry(self) -> None:
        if self.settings.geometry is not None:
            self.restoreGeometry(self.settings.geometry)
        if self.settings.window_state is not None:
            self.restoreState(self.settings.window_state)
        if self.settings.splitter is not None:
            self.splitter.restoreState(self.settings.splitter)

    def closeEvent(self, event) -> None:
        """Stop the answer, end the worker thread (quit, wait), then save and close the store."""
        self.settings.geometry = self.saveGeometry()
        self.settings.window_state = self.saveState()
        self.settings.splitter = self.splitter.saveState()
        self.settings.sync()
        if self.models_dialog is not None:
            self.models_dialog.cancel_downloads()
        self.engine.shutdown()
        # What the worker said before it ended (the stopped answer) is still queued: save it now.
        QCoreApplication.sendPostedEvents(self, QEvent.Type.MetaCall)
        self.store.close()
        super().closeEvent(event)


def _confirmed(parent: QWidget, question: str) -> bool:
    buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    return QMessageBox.question(parent, "dcp-desktop", question, buttons) == QMessageBox.StandardButton.Yes


def _image_ref(image: StoredImage) -> ImageRef:
    return ImageRef(image.sha256, str(image.thumbnail), image.width, image.height, image.selection)


def _message(stored: StoredMessage) -> Message:
    return Message(stored.role, stored.text, [_image_ref(image) for image in stored.images], stored.stats,
                   message_id=stored.id)
