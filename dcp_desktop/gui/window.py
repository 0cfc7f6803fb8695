"""The main window: sidebar of chats, model bar, chat controls, the conversation and the composer.

A view: it shows what its ChatController (chat_controller.py) holds and forwards what the user does;
every decision about chats, attachments, the model and answers is the controller's. It never waits on
the engine.
"""

from __future__ import annotations

from PySide6.QtCore import QCoreApplication, QEvent, Qt
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QListView, QMainWindow, QMenu, QMessageBox,
                               QPushButton, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from .chat_controller import ChatController
from .chat_model import CHAT_ID_ROLE
from .chat_view import ChatView
from .composer import Composer, sources_from_mime
from .controls import ChatControls
from .models_dialog import ModelsDialog
from .settings import Settings, data_dir
from .settings_dialog import SettingsDialog
from .store import Store

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"


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

    def show_state(self, model_state: str, n_keep: int, problem: str | None = None) -> None:
        """model_state: "none", "loading", "ready" or "demo" (the bundled model is ready); n_keep: the
        image tokens the chat's budget gives each image."""
        texts = {
            "none": ("Pick a model to start",
                     "dcp-desktop answers questions about your photos, screenshots and documents on this "
                     "computer; nothing leaves it. Open LLaVA GGUF files you have, or download one once "
                     "(about 4.7 GB)."),
            "loading": ("Loading the model…", "This takes a moment; you can attach images meanwhile."),
            "ready": ("Ask about an image",
                      "Drop an image here, paste one (Ctrl+V) or open one (Ctrl+O), then type a question. "
                      f"Each image costs the model {n_keep} tokens instead of 576: “What the model sees” "
                      "under an image shows which parts it kept."),
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
        self.controller = ChatController(self.settings, store or Store(data_dir()), self)
        self.models_dialog: ModelsDialog | None = None
        self._build()
        self._build_menus()
        self._connect_controller()
        self._restore_geometry()
        self.refresh_chat_list()
        self._update_page()
        self.controller.load_first_model()

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
        self.chat_view.set_model(self.controller.chat_model)
        self.chat_view.copy_requested.connect(self.copy_answer)
        self.chat_view.regenerate_requested.connect(self.controller.regenerate)
        self.empty_state = EmptyState(self)
        self.empty_state.models_button.clicked.connect(self.show_models)
        self.empty_state.sample_button.clicked.connect(self.controller.try_sample_scene)
        self.pages = QStackedWidget(self)
        self.pages.addWidget(self.empty_state)
        self.pages.addWidget(self.chat_view)
        return self.pages

    def _controls(self) -> QWidget:
        self.controls = ChatControls(self)
        self.controls.set_pruning(self.controller.method, self.controller.n_keep)
        self.controls.temperature.setValue(self.controller.temperature)
        self.controls.max_tokens.setValue(self.controller.max_tokens)
        self.controls.pruning_changed.connect(lambda: self.controller.set_pruning(*self.controls.pruning()))
        self.controls.generation_changed.connect(
            lambda: self.controller.set_generation(self.controls.temperature.value(), self.controls.max_tokens.value()))
        return self.controls

    def _composer(self) -> QWidget:
        self.composer = Composer(self)
        self.composer.send_clicked.connect(self.send)
        self.composer.stop_clicked.connect(self.controller.stop)
        self.composer.attach_clicked.connect(self.open_images)
        self.composer.attachment_removed.connect(self.controller.remove_attachment)
        self.composer.input.images_pasted.connect(self.controller.attach)
        return self.composer

    def _model_bar(self) -> QWidget:
        bar = QWidget(self)
        row = QHBoxLayout(bar)
        row.setContentsMargins(8, 6, 8, 0)
        self.model_label = QLabel(bar)
        row.addWidget(self.model_label, 1)
        row.addWidget(QPushButton("Models…", bar, clicked=self.show_models))
        row.addWidget(QPushButton("Settings…", bar, clicked=self.show_settings))
        return bar

    def _sidebar(self) -> QWidget:
        sidebar = QWidget(self)
        column = QVBoxLayout(sidebar)
        column.setContentsMargins(8, 8, 0, 8)
        column.addWidget(QPushButton("New chat", sidebar, clicked=self.controller.new_chat))
        self.chat_list_view = QListView(sidebar)
        self.chat_list_view.setModel(self.controller.chat_list)
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
        controller = self.controller
        self._action(file_menu, "&New chat", controller.new_chat, QKeySequence.StandardKey.New)
        self._action(file_menu, "&Open image…", self.open_images, QKeySequence.StandardKey.Open)
        self._action(file_menu, "&Paste image", self.paste_image, QKeySequence.StandardKey.Paste)
        file_menu.addSeparator()
        self._action(file_menu, "&Models…", self.show_models)
        self._action(file_menu, "&Settings…", self.show_settings)
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self._action(chat_menu, "&Stop answer", controller.stop, QKeySequence(Qt.Key.Key_Escape))
        self._action(chat_menu, "&Regenerate answer",
                     lambda: controller.regenerate(controller.chat_model.last_row("assistant")))
        self._action(chat_menu, "&Delete chat", self._confirm_delete_chat)
        self._action(chat_menu, "&Clear history…", self._confirm_clear_history)

    def _action(self, menu: QMenu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    # --- showing the controller's state --------------------------------------------------------

    def _connect_controller(self) -> None:
        controller = self.controller
        controller.state_changed.connect(self._update_page)
        controller.chats_changed.connect(self.refresh_chat_list)
        controller.notice.connect(self.statusBar().showMessage)
        controller.pruning_shown.connect(self.controls.set_pruning)
        controller.attachment_added.connect(self.composer.add_attachment)
        controller.attachment_ready.connect(self.composer.attachment_ready)
        controller.attachment_removed.connect(self.composer.remove_attachment)
        controller.generating.connect(self.composer.set_generating)
        controller.draft.connect(self._edit_draft)

    def _update_page(self) -> None:
        controller = self.controller
        self.pages.setCurrentWidget(self.chat_view if controller.chat_model.rowCount() else self.empty_state)
        self.empty_state.show_state(controller.model_state(), controller.n_keep, controller.start_problem)
        self._show_model_state()
        if self.models_dialog is not None and controller.model_name:
            self.models_dialog.set_current(controller.model_name)

    def _show_model_state(self) -> None:
        controller = self.controller
        files = controller.model_files
        text = {"ready": f"Model: <b>{controller.model_name}</b>",
                "demo": f"Model: <b>{controller.model_name}</b> (built in; coloured shapes only)",
                "loading": f"Loading {files[0] if files else ''} …",
                "none": "No model yet: choose one in <b>Models…</b>"}[controller.model_state()]
        self.model_label.setText(text)

    def refresh_chat_list(self) -> None:
        self.controller.refresh_chat_list()
        row = self.controller.chat_list.row_of(self.controller.chat_id)
        if row is None:
            self.chat_list_view.clearSelection()
        else:
            self.chat_list_view.setCurrentIndex(self.controller.chat_list.index(row))

    def _edit_draft(self, question: str) -> None:
        self.composer.input.setPlainText(question)
        self.composer.input.setFocus()

    # --- what the user does --------------------------------------------------------------------

    def send(self) -> None:
        question = self.composer.input.toPlainText().strip()
        if question and self.controller.can_send():
            self.composer.take_text()
            self.controller.send(question)

    def show_models(self) -> None:
        if self.models_dialog is None:  # one dialog for the app's life: downloads go on while it is hidden
            self.models_dialog = ModelsDialog(self.controller.model_name, self)
            self.models_dialog.model_chosen.connect(self.controller.load_model)
        self.models_dialog.show()
        self.models_dialog.raise_()

    def show_settings(self) -> None:
        if SettingsDialog(self.settings, self).exec():
            self.controller.reload()  # hardware settings need a reload

    def open_images(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Attach images", "", IMAGE_FILTER)
        self.controller.attach(paths)

    def paste_image(self) -> None:
        sources = sources_from_mime(QGuiApplication.clipboard().mimeData())
        if sources:
            self.controller.attach(sources)
        else:
            self.statusBar().showMessage("The clipboard holds no image", 5000)

    def dragEnterEvent(self, event) -> None:
        if sources_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.controller.attach(sources_from_mime(event.mimeData()))
        event.acceptProposedAction()

    def copy_answer(self, row: int) -> None:
        QGuiApplication.clipboard().setText(self.controller.chat_model.message(row).text)
        self.statusBar().showMessage("Answer copied", 3000)

    def _open_chat_at(self, index) -> None:
        self.controller.open_chat(index.data(CHAT_ID_ROLE))

    def _chat_menu(self, position) -> None:
        index = self.chat_list_view.indexAt(position)
        if index.isValid():
            menu = QMenu(self)
            menu.addAction("Delete chat", lambda: self._confirm_delete_chat(index.data(CHAT_ID_ROLE)))
            menu.exec(self.chat_list_view.viewport().mapToGlobal(position))

    def _confirm_delete_chat(self, chat_id: int | None = None) -> None:
        chat_id = self.controller.chat_id if chat_id is None else chat_id
        if chat_id is not None and _confirmed(self, "Delete this chat and its images?"):
            self.controller.delete_chat(chat_id)

    def _confirm_clear_history(self) -> None:
        if _confirmed(self, "Delete every chat and every stored image? This cannot be undone."):
            self.controller.clear_history()

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
        self.controller.shutdown()
        # What the worker said before it ended (the stopped answer) is still queued: save it now.
        QCoreApplication.sendPostedEvents(self.controller, QEvent.Type.MetaCall)
        self.controller.store.close()
        super().closeEvent(event)


def _confirmed(parent: QWidget, question: str) -> bool:
    buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    return QMessageBox.question(parent, "dcp-desktop", question, buttons) == QMessageBox.StandardButton.Yes
