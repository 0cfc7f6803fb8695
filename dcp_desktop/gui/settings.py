"""Where the app keeps its things: the data folder (history, images) and the QSettings values.

Normally the data folder is Qt's AppDataLocation and settings live where QSettings puts them for the
organisation "dcp-desktop". Setting DCP_DESKTOP_HOME moves both into that one folder (settings in
`settings.ini`): tests and portable installs use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

from ..pipeline import DEFAULT_METHOD, DEFAULT_TOKENS

ORGANISATION = "dcp-desktop"
APPLICATION = "dcp-desktop"
HOME_ENV = "DCP_DESKTOP_HOME"


def data_dir() -> Path:
    """The folder for the history database and the image store (created if missing)."""
    home = os.environ.get(HOME_ENV)
    folder = Path(home) if home else Path(QStandardPaths.writableLocation(QStandardPaths.AppDataLocation))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_qsettings() -> QSettings:
    home = os.environ.get(HOME_ENV)
    if home:
        return QSettings(str(Path(home) / "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(ORGANISATION, APPLICATION)


class _Value:
    """One typed QSettings entry. INI files give back strings, so every read converts."""

    def __init__(self, key: str, kind: type, default):
        self.key, self.kind, self.default = key, kind, default

    def __get__(self, settings: Settings, owner=None):
        if settings is None:
            return self
        raw = settings.qsettings.value(self.key, None)
        if raw is None or raw == "":
            return self.default
        if self.kind is bool:
            return raw in (True, "true", "1", 1)
        try:
            return self.kind(raw)
        except (TypeError, ValueError):
            return self.default  # a hand-edited or older settings file must not stop the app

    def __set__(self, settings: Settings, value) -> None:
        settings.qsettings.setValue(self.key, "" if value is None else value)


class Settings:
    """The app's settings. `model`/`mmproj` are what the user picked last (a catalog name, an LLM
    .gguf or a folder); method and tokens are the defaults for new chats (each chat keeps its own)."""

    model = _Value("model/model", str, None)
    mmproj = _Value("model/mmproj", str, None)
    method = _Value("chat/method", str, DEFAULT_METHOD)
    n_keep = _Value("chat/tokens", int, DEFAULT_TOKENS)
    temperature = _Value("generation/temperature", float, 0.0)
    max_tokens = _Value("generation/max_tokens", int, 256)
    n_gpu_layers = _Value("hardware/n_gpu_layers", int, -1)  # -1: automatic (PipelineOptions.n_gpu_layers None)
    n_threads = _Value("hardware/threads", int, 0)  # 0: llama.cpp's and PyTorch's defaults
    geometry = _Value("window/geometry", QByteArray, None)
    window_state = _Value("window/state", QByteArray, None)
    splitter = _Value("window/splitter", QByteArray, None)

    def __init__(self, qsettings: QSettings | None = None):
        self.qsettings = qsettings or open_qsettings()

    def sync(self) -> None:
        self.qsettings.sync()
