"""The engine side of the window: an EngineWorker in its own QThread owns the Pipeline.

Thread ownership: the worker thread alone touches the Pipeline (llama.cpp context, vision tower)
and the encoded-image cache. The GUI thread talks to it only through EngineClient, whose request
signals are queued to the worker's slots, and hears back through the worker's signals (queued to
the GUI thread). The one thing shared is `cancel`, a threading.Event the GUI sets to stop an answer.

A new method or token budget applies to the loaded Pipeline without reloading the models
(Pipeline.configure); new model files or hardware settings load the models again. Either, or a
different chat, starts the model's conversation over: the next question then re-sends every image of
the chat, pruned with the settings of that moment. Earlier answers stay on screen but the model does
not re-read them.
"""

from __future__ import annotations

import hashlib
import io
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from .. import models
from ..engine import GenerationParams
from ..errors import InputError
from ..image import load_image
from ..pipeline import EncodedImage, ImageTokens, Pipeline, PipelineOptions, Turn
from .overlay import Overlay

THUMBNAIL_PX = 512  # stored thumbnails: sharp at the chat's tile size on high-DPI screens


@dataclass(frozen=True)
class ModelRequest:
    """Which model to run and how. `model`: a catalog name, an LLM .gguf or a folder."""

    model: str
    mmproj: str | None
    options: PipelineOptions

    def needs_reload_from(self, loaded: ModelRequest | None) -> bool:
        """True when the files or the hardware settings differ (method/budget alone: a lazy rebuild)."""
        if loaded is None:
            return True
        mine, theirs = self.options, loaded.options
        return (self.model, self.mmproj, mine.n_threads, mine.n_gpu_layers, mine.device) != \
               (loaded.model, loaded.mmproj, theirs.n_threads, theirs.n_gpu_layers, theirs.device)


@dataclass(frozen=True)
class AskRequest:
    chat_id: int
    question: str
    images: tuple[tuple[str, str], ...]  # (sha256, stored path): every image of the chat, in order
    params: GenerationParams
    fresh: bool = False  # start the model's conversation over (regenerate)


@dataclass(frozen=True)
class PreparedImage:
    """An attachment that decoded fine: what the window shows and stores."""

    key: str  # the window's handle for the attachment
    sha256: str
    data: bytes = field(repr=False)  # the file's bytes, as given
    thumbnail_png: bytes = field(repr=False)  # load_image's decoding (EXIF orientation applied), ≤ THUMBNAIL_PX
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Answer:
    stats: dict  # see answer_stats()
    overlays: dict[str, dict] = field(default_factory=dict)  # sha256 → Overlay.to_dict(), images sent now
    stopped: bool = False


def describe(error: BaseException) -> str:
    """The line the window shows: an InputError as is, anything else summarised."""
    if isinstance(error, InputError):
        return str(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"Unexpected error ({type(error).__name__}: {first_line}). Details are in the terminal output."


def _thumbnail_png(image) -> bytes:
    thumbnail = image.copy()
    thumbnail.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="PNG")
    return buffer.getvalue()


class EngineWorker(QObject):
    """Loads the model, prepares images and streams answers, one request at a time."""

    model_loaded = Signal(object, str)  # the ModelRequest, the model's name
    model_failed = Signal(object, str)  # the ModelRequest, the message
    image_ready = Signal(object)  # PreparedImage
    image_failed = Signal(str, str)  # key, message
    token = Signal(str)  # one piece of the answer being streamed
    answer_done = Signal(object)  # Answer
    answer_failed = Signal(str)
    status = Signal(str)

    def __init__(self):
        super().__init__()
        self.cancel = threading.Event()  # set by the GUI thread: stop the answer being streamed
        self._pipe: Pipeline | None = None
        self._wanted: ModelRequest | None = None
        self._loaded: ModelRequest | None = None
        self._encoded: dict[str, EncodedImage] = {}  # sha256 → vision output, for this Pipeline
        self._chat_id: int | None = None  # the chat the model's conversation belongs to
        self._sent: set[str] = set()  # images already in that conversation

    # --- model ---------------------------------------------------------------------------------

    @Slot(object)
    def configure(self, request: ModelRequest) -> None:
        """Use `request` from now on: new files load now (errors show at once), a new method or
        budget applies at the next image or question without reloading the models."""
        reload_now = self._pipe is None or request.needs_reload_from(self._wanted)
        self._wanted = request
        if reload_now:
            self._load()
        else:  # the same files: the window waits to hear that they are ready
            self.model_loaded.emit(request, self._pipe.info.name)

    def _load(self) -> bool:
        self.close()
        self.status.emit(f"Loading {self._wanted.model} …")
        try:
            self._pipe = Pipeline(models.resolve(self._wanted.model, self._wanted.mmproj), self._wanted.options)
        except Exception as error:  # every failure becomes a message in the window
            _log(error)
            self.model_failed.emit(self._wanted, describe(error))
            return False
        self._loaded = self._wanted
        self.model_loaded.emit(self._wanted, self._pipe.info.name)
        self.status.emit(f"{self._pipe.info.name} ready")
        return True

    def _pipeline(self) -> Pipeline:
        if self._wanted is None:
            raise InputError("no model is loaded: open Models… to pick GGUF files or download one")
        same_models = self._pipe is not None and not self._wanted.needs_reload_from(self._loaded)
        if same_models and self._loaded != self._wanted:
            self._switch_pruning()
        if self._pipe is None or self._loaded != self._wanted:
            if not self._load():
                raise InputError("the model could not be loaded (see the message above); pick another in Models…")
        return self._pipe

    def _switch_pruning(self) -> None:
        """A new method or budget on the loaded models: no reload, but the conversation starts over
        so the chat's images are pruned again the new way."""
        self._pipe.configure(self._wanted.options)  # InputError for a bad budget: shown as is
        self._pipe.new_chat()
        self._encoded.clear()  # in-encoder pruning settings change the encoder's output
        self._chat_id, self._sent = None, set()
        self._loaded = self._wanted

    def close(self) -> None:
        """Free the Pipeline. Called in the worker thread, or by the GUI once the thread has ended."""
        if self._pipe is not None:
            self._pipe.close()
        self._pipe, self._loaded = None, None
        self._encoded.clear()
        self._chat_id, self._sent = None, set()

    # --- images --------------------------------------------------------------------------------

    @Slot(str, object)
    def prepare_image(self, key: str, source) -> None:
        """Decode an attachment (a path or encoded bytes), make its thumbnail and, when a model is
        loaded, run the vision tower now, while the user types the question."""
        try:
            image = load_image(source)
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            prepared = PreparedImage(key, hashlib.sha256(data).hexdigest(), data, _thumbnail_png(image), *image.size)
            if self._pipe is not None and self._loaded == self._wanted:
                self._encoded[prepared.sha256] = self._pipe.encode_image(image)
        except Exception as error:
            _log(error)
            self.image_failed.emit(key, describe(error))
            return
        self.image_ready.emit(prepared)

    def _encoded_image(self, pipe: Pipeline, sha256: str, path: str) -> EncodedImage:
        if sha256 not in self._encoded:
            self._encoded[sha256] = pipe.encode_image(path)
        return self._encoded[sha256]

    # --- answers -------------------------------------------------------------------------------

    @Slot(object)
    def ask(self, request: AskRequest) -> None:
        try:
            answer = self._answer(request)
        except Exception as error:
            _log(error)
            self._chat_id = None  # the conversation may be half-written: start it over next time
            self.answer_failed.emit(describe(error))
            return
        self.answer_done.emit(answer)

    def _answer(self, request: AskRequest) -> Answer:
        pipe = self._pipeline()
        if request.fresh or request.chat_id != self._chat_id:
            pipe.new_chat()
            self._chat_id, self._sent = request.chat_id, set()
        new = [(sha, path) for sha, path in request.images if sha not in self._sent]
        encoded = [self._encoded_image(pipe, sha, path) for sha, path in new]
        turn = pipe.ask(request.question, encoded, request.params)
        stopped = self._stream(turn)
        self._sent.update(sha for sha, _ in new)
        background = tuple(int(m * 255) for m in pipe.vision.cfg.image_mean)  # the padding preprocess uses
        overlays = {sha: _overlay(image, background).to_dict() for (sha, _), image in zip(new, turn.images)}
        return Answer(answer_stats(pipe.options.method, turn, stopped), overlays, stopped)

    def _stream(self, turn: Turn) -> bool:
        """Emit the answer piece by piece; True if the user stopped it."""
        try:
            for piece in turn:
                self.token.emit(piece)
                if self.cancel.is_set():
                    return True
            return False
        finally:
            turn.close()  # closing early keeps every token so far; the chat goes on


def answer_stats(method: str, turn: Turn, stopped: bool) -> dict:
    """What the window shows under an answer (times in ms). The first token counts from the start of
    pruning the turn's images: their vision pass ran when they were attached."""
    prepare_ms = sum(image.timings_ms["prune"] + image.timings_ms["project"] for image in turn.images)
    return {"method": method, "image_tokens": turn.n_image_tokens,
            "image_tokens_full": sum(image.n_full for image in turn.images),
            "text_tokens": turn.n_text_tokens, "generated_tokens": turn.n_answer_tokens,
            "prefill_ms": turn.prefill_ms,
            "first_token_ms": None if turn.first_token_ms is None else prepare_ms + turn.first_token_ms,
            "tokens_per_s": turn.decode_tokens_per_s, "stopped": stopped}


def _overlay(image: ImageTokens, background: tuple[int, int, int]) -> Overlay:
    selection = image.selection
    grid = image.grid_assignment  # (n_full,) kept token of each grid patch, -1 dropped
    return Overlay(tuple(int(i) for i in selection.indices), tuple(float(m) for m in selection.masses),
                   float(selection.kappa), image.n_full, background,
                   None if grid is None else tuple(int(a) for a in grid))


def _log(error: BaseException) -> None:
    """Unexpected errors keep their traceback on the terminal; the window gets one line."""
    if not isinstance(error, InputError):
        traceback.print_exception(error)


class EngineClient(QObject):
    """The GUI thread's handle on the worker: starts its thread, posts requests, shuts it down."""

    _configure = Signal(object)
    _prepare = Signal(str, object)
    _ask = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.worker = EngineWorker()  # no parent: it moves to the thread
        self.thread = QThread(self)
        self.thread.setObjectName("dcp-engine")
        self.worker.moveToThread(self.thread)
        self._configure.connect(self.worker.configure)
        self._prepare.connect(self.worker.prepare_image)
        self._ask.connect(self.worker.ask)
        self.thread.start()

    def configure(self, request: ModelRequest) -> None:
        self._configure.emit(request)

    def prepare_image(self, key: str, source: str | bytes) -> None:
        self._prepare.emit(key, source)

    def ask(self, request: AskRequest) -> None:
        self.worker.cancel.clear()  # before posting: a Stop pressed from now on stops this answer
        self._ask.emit(request)

    def stop(self) -> None:
        self.worker.cancel.set()

    def shutdown(self) -> None:
        """Stop the answer, end the thread (quit, then wait for the request in hand), free the model."""
        self.worker.cancel.set()
        self.thread.quit()
        self.thread.wait()
        self.worker.close()  # the thread has ended: nothing else touches the Pipeline now
