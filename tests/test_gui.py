"""dcp-desktop end to end on the tiny GGUF pair: a whole conversation driven through the window
(attach, ask, stream, stop, regenerate, reopen after a restart), the overlay, errors shown in the
window, the model manager, the bundled model on a first start (the tiny pair standing in for the
demo model), and history that survives kill -9 mid-transaction and mid-answer."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported: no display needed

import json  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QObject, QPointF, QRectF, Qt, QUrl, Slot  # noqa: E402
from PySide6.QtGui import QColor, QDropEvent, QGuiApplication, QImage, QPainter  # noqa: E402

from dcp_desktop import models  # noqa: E402
from dcp_desktop import scenes  # noqa: E402
from dcp_desktop.gui.models_dialog import ModelsDialog  # noqa: E402
from dcp_desktop.gui.overlay import Overlay, paint_overlay  # noqa: E402
from dcp_desktop.gui.settings import HOME_ENV, Settings  # noqa: E402
from dcp_desktop.gui.store import Store  # noqa: E402
from dcp_desktop.gui.window import MainWindow  # noqa: E402

# A merging method, so some kept tokens stand for several patches (masses > 1) in the overlay.
TEST_METHOD = "visionzip"
SHAPES = Path(__file__).parent / "data" / "shapes.png"
ANSWER_TIMEOUT_MS = 20_000


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh data folder (history, images, settings.ini), an empty Hugging Face cache and no bundled
    model (once the demo model ships, every window would load it), unless a test bundles one."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(models, "BUNDLED", {})
    return tmp_path / "home"


def bundle(monkeypatch, llm: Path, mmproj: Path) -> models.BundledModel:
    """Make `models.BUNDLED` hold one "demo" model with these files (absolute paths stay as they are)."""
    demo = models.BundledModel("demo", str(llm), str(mmproj), "the tiny test model standing in for the demo")
    monkeypatch.setattr(models, "BUNDLED", {demo.name: demo})
    return demo


@pytest.fixture
def bundled_tiny(home, monkeypatch, tiny) -> models.BundledModel:
    """The tiny pair as the bundled demo model (after `home`, which bundles nothing)."""
    return bundle(monkeypatch, tiny.llm, tiny.mmproj)


@pytest.fixture
def make_window(qtbot, home):
    """MainWindow factory on the same data folder: a second call is the app after a restart."""
    def make(max_tokens: int = 24) -> MainWindow:
        settings = Settings()
        # One thread: llama.cpp's spinning threads slow down 10-100x when other jobs share the 2 cores.
        settings.method, settings.n_keep, settings.n_threads = TEST_METHOD, 16, 1
        settings.max_tokens = max_tokens
        window = MainWindow(settings)
        qtbot.addWidget(window)  # closed at teardown: the worker thread ends with it
        window.show()
        return window
    return make


@pytest.fixture
def window(make_window, qtbot, tiny) -> MainWindow:
    """A window with the tiny model loaded."""
    window = make_window()
    window.controller.load_model(str(tiny.dir))
    qtbot.waitUntil(lambda: window.controller.model_name is not None, timeout=ANSWER_TIMEOUT_MS)
    return window


class TokenRecorder(QObject):
    """Receives the worker's token signal in the GUI thread, after the window (connected first)."""

    def __init__(self, window: MainWindow):
        super().__init__()
        self.window, self.pieces, self.shown = window, [], []
        window.controller.engine.worker.token.connect(self.record)

    @Slot(str)
    def record(self, piece: str) -> None:
        self.pieces.append(piece)
        self.shown.append(len(self.window.controller.chat_model.message(self.window.controller.answering.row).text))


def slow_down(window: MainWindow, seconds_per_token: float = 0.005) -> None:
    """Make the tiny model answer at a laptop's pace (it streams ~5000 tokens/s, fast enough to finish
    before the test can press Stop): a direct connection sleeps in the worker thread after each token."""
    window.controller.engine.worker.token.connect(lambda _piece: time.sleep(seconds_per_token),
                                       Qt.ConnectionType.DirectConnection)


def attach_and_wait(qtbot, window: MainWindow, *paths) -> None:
    window.controller.attach([str(path) for path in paths])
    qtbot.waitUntil(lambda: bool(window.controller.attachments) and all(a.prepared for a in window.controller.attachments.values()))


def ask(qtbot, window: MainWindow, question: str) -> dict:
    """Type the question, press Enter, wait for the whole answer; returns its stats."""
    qtbot.keyClicks(window.composer.input, question)
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    assert window.controller.answering is not None, "Enter did not send the question"
    qtbot.waitUntil(lambda: window.controller.answering is None, timeout=ANSWER_TIMEOUT_MS)
    return window.controller.chat_model.message(window.controller.chat_model.last_row("assistant")).stats


def notices(window: MainWindow) -> list[str]:
    return [m.text for m in window.controller.chat_model.messages() if m.role == "notice"]


def test_conversation_streams_follows_up_and_survives_a_restart(qtbot, window, make_window, image_path):
    attach_and_wait(qtbot, window, image_path)
    qtbot.keyClicks(window.composer.input, "first line")
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    assert window.composer.input.toPlainText() == "first line\n" and window.controller.answering is None  # Shift+Enter
    window.composer.input.clear()
    recorder = TokenRecorder(window)
    stats = ask(qtbot, window, "What is in the image?")
    answer = window.controller.chat_model.message(1)
    # The bubble grew by one piece per token signal, and ends as their concatenation. (A token
    # holding part of a UTF-8 character gives no piece: the random model makes such tokens.)
    assert 1 < len(recorder.pieces) <= stats["generated_tokens"] == 24
    assert recorder.shown == [len("".join(recorder.pieces[:i + 1])) for i in range(len(recorder.pieces))]
    assert answer.text == "".join(recorder.pieces) and not answer.streaming
    assert (stats["image_tokens"], stats["image_tokens_full"], stats["method"]) == (16, 576, TEST_METHOD)
    assert stats["first_token_ms"] > 0 and stats["tokens_per_s"] > 0
    qtbot.waitUntil(lambda: "16 of 576 image tokens" in window.chat_view.bubbles[1].stats.text())  # throttled redraws

    follow_up = ask(qtbot, window, "Is there a red circle?")
    assert follow_up["image_tokens"] == 0  # the image is already in the model's cache
    chat_id = window.controller.chat_id
    window.close()

    restarted = make_window()
    assert [chat.id for chat in restarted.controller.store.chats()] == [chat_id]
    restarted.controller.open_chat(chat_id)
    roles = [m.role for m in restarted.controller.chat_model.messages()]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert restarted.controller.chat_model.message(1).text == answer.text
    assert restarted.controller.chat_model.message(0).images[0].selection["indices"]  # the overlay survives too
    restarted.controller.load_model(window.controller.model_files[0])
    qtbot.waitUntil(lambda: restarted.controller.model_name is not None)
    assert ask(qtbot, restarted, "And now?")["image_tokens"] == 16  # a reopened chat re-sends its images


def test_stop_ends_the_answer_and_the_chat_goes_on(qtbot, make_window, tiny, image_path):
    window = make_window(max_tokens=8192)
    window.controller.load_model(str(tiny.dir))
    qtbot.waitUntil(lambda: window.controller.model_name is not None)
    slow_down(window)
    attach_and_wait(qtbot, window, image_path)
    qtbot.keyClicks(window.composer.input, "Describe everything")
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.answering is not None and bool(window.controller.answering.text),
                    timeout=ANSWER_TIMEOUT_MS)
    window.activateWindow()
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Escape)  # the Stop shortcut
    qtbot.waitUntil(lambda: window.controller.answering is None, timeout=ANSWER_TIMEOUT_MS)
    stats = window.controller.chat_model.message(1).stats
    assert stats["stopped"] and 0 < stats["generated_tokens"] < 1500  # the context allows ~1900
    qtbot.waitUntil(lambda: "stopped" in window.chat_view.bubbles[1].stats.text())
    window.controls.max_tokens.setValue(8)
    assert not ask(qtbot, window, "And the colours?")["stopped"]
    assert [m.role for m in window.controller.store.messages(window.controller.chat_id)] == ["user", "assistant"] * 2


def test_closing_mid_answer_is_clean(qtbot, make_window, tiny, home):
    window = make_window(max_tokens=8192)
    window.controller.load_model(str(tiny.dir))
    qtbot.waitUntil(lambda: window.controller.model_name is not None)
    slow_down(window)
    qtbot.keyClicks(window.composer.input, "Tell me a long story")
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.answering is not None and bool(window.controller.answering.text),
                    timeout=ANSWER_TIMEOUT_MS)
    chat_id = window.controller.chat_id
    window.close()  # cancel, quit(), wait(): returns once the worker thread has ended
    assert window.controller.engine.thread.isFinished() and window.controller.engine.worker._pipe is None
    with Store(home) as store:  # the stopped answer was saved before the store closed
        answer = store.messages(chat_id)[-1]
        assert answer.role == "assistant" and answer.stats["stopped"]


def test_overlay_draws_the_kept_patches_and_follows_the_budget(qtbot, window, image_path):
    attach_and_wait(qtbot, window, image_path)
    ask(qtbot, window, "What is in the image?")
    tile = window.chat_view.bubbles[0].tiles[0]
    qtbot.waitUntil(lambda: tile.toggle.isEnabled())
    assert tile.caption.text().startswith("16 of 576 tokens · κ")
    tile.toggle.click()
    tile.picture.grab()  # paints it
    assert tile.picture.cells_drawn == 16
    tile.toggle.click()
    tile.picture.grab()
    assert tile.picture.cells_drawn == 0

    window.controls.budget.setCurrentIndex(window.controls.budget.findData(8))
    attach_and_wait(qtbot, window, SHAPES)
    stats = ask(qtbot, window, "And this one?")
    assert stats["image_tokens"] == 2 * 8  # rebuilt for 8 tokens: both images re-sent at the new budget
    for bubble in (window.chat_view.bubbles[0], window.chat_view.bubbles[2]):
        tile = bubble.tiles[0]
        qtbot.waitUntil(lambda tile=tile: tile.caption.text().startswith("8 of 576"))
        tile.toggle.click()
        tile.picture.grab()
        assert tile.picture.cells_drawn == 8
    assert window.controller.store.chat(window.controller.chat_id).n_keep == 8


def test_overlay_gets_the_grid_assignment_of_the_kept_tokens(qtbot, window, image_path):
    attach_and_wait(qtbot, window, image_path)
    ask(qtbot, window, "What is in the image?")
    tile = window.chat_view.bubbles[0].tiles[0]
    qtbot.waitUntil(lambda: tile.toggle.isEnabled())
    overlay = Overlay.from_dict(window.controller.chat_model.message(0).images[0].selection)
    assert overlay.assignment is not None and len(overlay.assignment) == 576
    assignment = np.array(overlay.assignment)
    assert set(assignment[assignment >= 0]) == set(range(len(overlay.indices)))  # every kept token
    np.testing.assert_array_equal(assignment[list(overlay.indices)], np.arange(len(overlay.indices)))


def test_overlay_painting_masses_and_cluster_tints():
    """Kept cells are framed and filled, dropped ones dimmed; with an assignment every patch is tinted."""
    image = QImage(336, 336, QImage.Format.Format_RGB32)
    overlay = Overlay(indices=(0, 300), masses=(1.0, 40.0), kappa=0.5, n_full=576, background=(0, 0, 0))
    for assignment in (None, tuple([0] * 300 + [1] * 275 + [-1])):
        image.fill(QColor("white"))
        painter = QPainter(image)
        drawn = paint_overlay(painter, QRectF(0, 0, 336, 336), replace(overlay, assignment=assignment))
        painter.end()
        assert drawn == 2
        dropped = QColor(image.pixel(336 - 3, 336 - 3))  # the last patch: dropped either way
        assert dropped.lightness() < 140
        if assignment is not None:  # a patch of token 1's cluster, not kept itself: tinted, not grey
            tinted = QColor(image.pixel(14 * 20 + 7, 14 * 20 + 7))
            assert tinted.saturation() > 60


def test_bad_image_is_a_message_not_a_crash(qtbot, window, tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image at all\n")
    window.controller.attach([str(text_file)])
    qtbot.waitUntil(lambda: bool(notices(window)))
    assert "not an image" in notices(window)[0] and str(text_file) in notices(window)[0]
    assert window.controller.attachments == {}
    assert ask(qtbot, window, "Still there?")["generated_tokens"] > 0


def test_bad_model_files_are_messages_not_crashes(qtbot, make_window, tiny, tmp_path):
    window = make_window()
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(Path(tiny.llm).read_bytes()[: Path(tiny.llm).stat().st_size // 2])
    window.controller.load_model(str(truncated), str(tiny.mmproj))
    qtbot.waitUntil(lambda: bool(notices(window)))
    assert "truncated GGUF" in notices(window)[-1]
    window.controller.load_model(str(tiny.llm), str(tiny.llm))  # an LLM passed as the mmproj
    qtbot.waitUntil(lambda: len(notices(window)) == 2)
    assert "not a CLIP vision projector" in notices(window)[-1]
    assert window.controller.model_name is None and window.settings.model is None  # a bad pick is not remembered
    window.controller.load_model(str(tiny.dir))
    qtbot.waitUntil(lambda: window.controller.model_name is not None)
    assert window.settings.model == str(tiny.dir)


def test_first_start_without_a_model_says_what_to_do(qtbot, make_window):
    window = make_window()
    assert window.pages.currentWidget() is window.empty_state
    assert window.empty_state.title.text() == "Pick a model to start"
    assert window.empty_state.models_button.isVisibleTo(window)
    qtbot.keyClicks(window.composer.input, "hello")
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    assert "No model is loaded" in notices(window)[0]
    assert window.controller.store.chats() == []


def test_picking_the_loaded_model_again_comes_back_ready(qtbot, window, tiny):
    """The worker keeps the loaded files (no reload) and still tells the window they are ready."""
    window.controller.load_model(str(tiny.dir))
    assert window.controller.model_name is None  # "Loading…" until the worker answers
    qtbot.waitUntil(lambda: window.controller.model_name is not None, timeout=ANSWER_TIMEOUT_MS)
    assert window.pages.currentWidget() is window.empty_state and window.empty_state.title.text() == "Ask about an image"


def test_first_start_loads_the_bundled_model(qtbot, bundled_tiny, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: window.controller.model_name == "demo", timeout=ANSWER_TIMEOUT_MS)
    assert window.controller.model_files == ("demo", None)
    assert window.empty_state.title.text() == "Try the demo model"
    assert "coloured shapes" in window.empty_state.body.text() and "Models…" in window.empty_state.body.text()
    assert window.empty_state.sample_button.isVisibleTo(window)
    assert "built in" in window.model_label.text()
    assert window.settings.model == "demo"  # remembered like any pick


def test_models_dialog_lists_the_bundled_model_and_use_loads_it(qtbot, bundled_tiny, make_window, tiny):
    picked = Settings()
    picked.model = str(tiny.dir)  # an explicit pick wins over the bundled model
    picked.sync()
    window = make_window()
    qtbot.waitUntil(lambda: window.controller.model_name is not None, timeout=ANSWER_TIMEOUT_MS)
    assert window.controller.model_files == (str(tiny.dir), None)
    assert window.empty_state.title.text() == "Ask about an image"
    assert not window.empty_state.sample_button.isVisibleTo(window)
    window.show_models()
    dialog = window.models_dialog
    [row] = dialog.bundled_rows
    size_mb = (Path(tiny.llm).stat().st_size + Path(tiny.mmproj).stat().st_size) / 1e6
    assert row.state.text() == f"bundled, no download · {size_mb:.1f} MB on disk"
    layout = dialog.layout()
    assert layout.indexOf(row) < layout.indexOf(dialog.rows[0])  # above the catalog
    row.use_button.click()
    assert not dialog.isVisible()
    qtbot.waitUntil(lambda: window.controller.model_name == "demo", timeout=ANSWER_TIMEOUT_MS)
    assert window.settings.model == "demo"


def test_sample_scene_attaches_an_image_and_suggests_a_question(qtbot, bundled_tiny, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: window.controller.model_name == "demo", timeout=ANSWER_TIMEOUT_MS)
    window.empty_state.sample_button.click()
    [attachment] = window.controller.attachments.values()
    seed = int(re.fullmatch(r"scene (\d+)\.png", attachment.name).group(1))
    assert seed < scenes.SPLIT_BASE["validation"]  # never a validation or test image
    question = window.composer.input.toPlainText()
    assert question in {q.question for q in scenes.questions_about(seed, 20)}
    qtbot.waitUntil(lambda: attachment.prepared is not None)
    assert (attachment.prepared.width, attachment.prepared.height) == (scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
    assert window.controller.answering is None and window.controller.store.chats() == []  # suggested, not sent
    window.empty_state.sample_button.click()  # another scene replaces the first
    assert len(window.controller.attachments) == 1 and attachment.key not in window.controller.attachments
    qtbot.waitUntil(lambda: all(a.prepared for a in window.controller.attachments.values()))
    qtbot.keyClick(window.composer.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.controller.answering is None, timeout=ANSWER_TIMEOUT_MS)
    [message, _answer] = window.controller.store.messages(window.controller.chat_id)
    assert message.text == window.controller.chat_model.message(0).text and len(message.images) == 1


def test_missing_bundled_files_say_so_without_a_crash(qtbot, home, monkeypatch, make_window, tmp_path):
    bundle(monkeypatch, tmp_path / "gone.gguf", tmp_path / "mmproj-gone.gguf")
    window = make_window()
    assert window.controller.model_files is None and window.controller.model_name is None
    assert window.pages.currentWidget() is window.empty_state
    assert window.empty_state.title.text() == "Pick a model to start"
    problem = window.empty_state.problem
    assert problem.isVisibleTo(window) and "missing from this installation" in problem.text()
    assert str(tmp_path / "gone.gguf") in problem.text() and "Models…" in problem.text()
    assert window.empty_state.models_button.isVisibleTo(window)
    window.show_models()
    [row] = window.models_dialog.bundled_rows
    assert "missing" in row.state.text() and not row.use_button.isEnabled()


def test_regenerate_copy_paste_new_and_delete(qtbot, window):
    QGuiApplication.clipboard().setImage(QImage(str(SHAPES)))
    window.paste_image()
    dropped = QMimeData()
    dropped.setUrls([QUrl.fromLocalFile(str(SHAPES))])
    window.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, dropped,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    qtbot.waitUntil(lambda: all(a.prepared for a in window.controller.attachments.values()))
    assert [a.name for a in window.controller.attachments.values()] == ["pasted image", "shapes.png"]
    ask(qtbot, window, "What is in the image?")
    window.controller.regenerate(1)
    qtbot.waitUntil(lambda: window.controller.answering is None, timeout=ANSWER_TIMEOUT_MS)
    messages = window.controller.store.messages(window.controller.chat_id)
    assert [m.role for m in messages] == ["user", "assistant"]  # the old answer was replaced
    assert [image.path.suffix for image in messages[0].images] == [".png", ".png"]
    assert messages[1].stats["image_tokens"] == 2 * 16  # regenerated from a fresh conversation
    window.copy_answer(1)
    assert QGuiApplication.clipboard().text() == window.controller.chat_model.message(1).text
    first_chat = window.controller.chat_id
    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)  # New chat
    assert window.controller.chat_id is None and window.controller.chat_model.rowCount() == 0
    window.controller.delete_chat(first_chat)
    assert window.controller.store.chats() == [] and list(window.controller.store.images_dir.iterdir()) == []


def test_models_dialog_lists_the_catalog_and_reports_a_failed_download(qtbot, home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the download fails at once, as it does offline
    dialog = ModelsDialog(None)
    qtbot.addWidget(dialog)
    names = [row.entry.name for row in dialog.rows]
    assert "llava-1.5-7b" in names and all(not row.use_button.isEnabled() for row in dialog.rows)
    row = dialog.rows[0]
    row.toggle_download()
    row.toggle_download()  # Cancel
    qtbot.waitUntil(lambda: not row.download.running, timeout=10_000)
    qtbot.waitUntil(lambda: "Cancelled" in row.message.text())
    row.toggle_download()
    qtbot.waitUntil(lambda: not row.download.running, timeout=30_000)
    qtbot.waitUntil(lambda: "download of" in row.message.text() and row.message.isVisibleTo(dialog))
    chosen = []
    dialog.model_chosen.connect(lambda model, mmproj: chosen.append((model, mmproj)))
    dialog.choose_files(["/m/mmproj-x.gguf", "/m/llm.gguf"])
    assert chosen == [("/m/llm.gguf", "/m/mmproj-x.gguf")]


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from dcp_desktop.gui.store import Store

    store = Store(sys.argv[1])
    store.put_image("a" * 64, b"image bytes", ".png", b"thumbnail", 4, 3)
    first = store.create_chat("first", "dcp", 16)
    store.add_message(first, "user", "What is in the image?", ["a" * 64])
    store.add_message(first, "assistant", "A red circle.", stats={"image_tokens": 16})
    second = store.create_chat("second", "dcp", 16)

    def stall(statement):  # stop inside add_message's transaction, after the big row is written
        if statement.startswith("INSERT INTO message_images"):
            print("mid-transaction", flush=True)
            time.sleep(120)

    store.db.set_trace_callback(stall)
    store.add_message(second, "user", "x" * 5_000_000, ["a" * 64])
""")


def test_store_survives_kill_9_mid_transaction(tmp_path):
    folder = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[1])
    try:
        assert writer.stdout.readline().strip() == "mid-transaction"
        assert (folder / "history.sqlite3-wal").stat().st_size > 1_000_000  # uncommitted pages on disk
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    with Store(folder) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        first, second = sorted(store.chats(), key=lambda chat: chat.id)
        messages = store.messages(first.id)
        assert [(m.role, m.text) for m in messages] == [("user", "What is in the image?"),
                                                        ("assistant", "A red circle.")]
        assert messages[0].images[0].path.read_bytes() == b"image bytes"
        assert store.messages(second.id) == []  # the killed message was rolled back whole


# The app in a child process (DCP_DESKTOP_HOME and QT_QPA_PLATFORM come from the test's environment):
# one finished chat, then a long answer in a second chat, killed once it streams.
KILLED_APP = textwrap.dedent("""
    import json, sys, time
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication
    from dcp_desktop.gui.settings import Settings
    from dcp_desktop.gui.window import MainWindow

    model, image, method = sys.argv[1:]
    app = QApplication([])

    def wait_until(done, seconds=120):
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                sys.exit("timed out")
            app.processEvents()
            time.sleep(0.005)

    def send(question, max_tokens):
        window.controls.max_tokens.setValue(max_tokens)
        window.composer.input.setPlainText(question)
        window.send()

    settings = Settings()
    settings.method, settings.n_keep, settings.n_threads = method, 16, 1
    window = MainWindow(settings)
    window.show()
    window.controller.load_model(model)
    wait_until(lambda: window.controller.model_name is not None)
    window.controller.attach([image])
    wait_until(lambda: all(a.prepared for a in window.controller.attachments.values()))
    send("What is in the image?", 24)
    wait_until(lambda: window.controller.answering is None)
    print(json.dumps(window.controller.chat_model.message(1).text), flush=True)

    window.controller.new_chat()
    # At a laptop's pace (see slow_down), so the answer is still streaming when the kill comes.
    window.controller.engine.worker.token.connect(lambda _piece: time.sleep(0.05), Qt.ConnectionType.DirectConnection)
    send("Tell me a long story", 8192)
    wait_until(lambda: window.controller.answering is None or window.controller.answering.text)
    print("streaming" if window.controller.answering else "the answer ended before the kill", flush=True)
    wait_until(lambda: False)  # answering until killed
""")


def test_app_killed_mid_answer_keeps_history_and_starts_again(qtbot, home, make_window, tiny, image_path, tmp_path):
    stderr_path = tmp_path / "app-stderr.txt"
    with open(stderr_path, "w") as stderr:
        app = subprocess.Popen([sys.executable, "-c", KILLED_APP, str(tiny.dir), str(image_path), TEST_METHOD],
                               stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=Path(__file__).parents[1],
                               env={**os.environ, "QT_QPA_PLATFORM": "offscreen", HOME_ENV: str(home)})
        try:
            earlier_answer_line, marker = app.stdout.readline(), app.stdout.readline().strip()
            assert marker == "streaming", stderr_path.read_text()[-2000:]
            os.kill(app.pid, signal.SIGKILL)
        finally:
            app.kill()
            app.wait()
    earlier_answer = json.loads(earlier_answer_line)

    with Store(home) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        chats = {chat.title: chat.id for chat in store.chats()}
        earlier = store.messages(chats["What is in the image?"])
        assert [(m.role, m.text) for m in earlier] == [("user", "What is in the image?"), ("assistant", earlier_answer)]
        assert earlier[0].images[0].path.read_bytes() == image_path.read_bytes()
        assert earlier[1].stats["generated_tokens"] == 24
        killed = store.messages(chats["Tell me a long story"])
        assert [m.role for m in killed] == ["user"]  # the answer was still streaming: nothing of it stored

    restarted = make_window()
    titles = [restarted.controller.chat_list.index(row).data() for row in range(restarted.controller.chat_list.rowCount())]
    assert sorted(titles) == ["Tell me a long story", "What is in the image?"]
    qtbot.waitUntil(lambda: restarted.controller.model_name is not None, timeout=ANSWER_TIMEOUT_MS)  # from settings.ini
    restarted.controller.open_chat(chats["What is in the image?"])
    assert restarted.controller.chat_model.message(1).text == earlier_answer
    assert ask(qtbot, restarted, "And now?")["image_tokens"] == 16


def test_the_gui_never_imports_llama_cpp():
    """The window talks to the engine through the worker and the Pipeline, never to llama.cpp."""
    gui = Path(__file__).parents[1] / "dcp_desktop" / "gui"
    importing = re.compile(r"^\s*(import|from)\s+llama_cpp\b", re.MULTILINE)
    assert not [path.name for path in gui.glob("*.py") if importing.search(path.read_text())]
