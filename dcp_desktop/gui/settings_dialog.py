"""Hardware settings: LLM layers on the GPU and CPU threads. Changing them reloads the model."""

from __future__ import annotations

import os

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox

from .settings import Settings


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.gpu_layers = QSpinBox(self, minimum=-1, maximum=999, value=settings.n_gpu_layers)
        self.gpu_layers.setSpecialValueText("automatic")  # -1: every layer when llama.cpp has a GPU backend
        self.gpu_layers.setToolTip("LLM layers offloaded to the GPU; needs a CUDA or Metal build of llama.cpp "
                                   "(automatic: all of them when there is one, else none)")
        self.threads = QSpinBox(self, minimum=0, maximum=max(64, os.cpu_count() or 1), value=settings.n_threads)
        self.threads.setSpecialValueText("automatic")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                   self, accepted=self.accept, rejected=self.reject)
        form = QFormLayout(self)
        form.addRow("GPU layers", self.gpu_layers)
        form.addRow("CPU threads", self.threads)
        form.addRow(QLabel("Changing these reloads the model (a 7B model takes a few seconds).", self))
        form.addRow(buttons)

    def accept(self) -> None:
        self.settings.n_gpu_layers = self.gpu_layers.value()
        self.settings.n_threads = self.threads.value()
        super().accept()
