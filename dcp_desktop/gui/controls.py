"""The bar above the chat: pruning method and image-token budget (per chat), temperature and
answer length (for every chat)."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QSpinBox, QWidget

from ..pipeline import DEFAULT_METHOD, DEFAULT_TOKENS
from ..prune import METHODS

BUDGETS = (8, 16, 32, 64, 128, 192, 576)
FULL_TOKENS = 576
METHOD_HINTS = {
    "dcp": "DCP-Prune: anchors absorb their context, text-aware reselection when the kept set drifts",
    "full": "no pruning: every patch goes to the model (slowest, the reference)",
    "fastervlm": "the patches the [CLS] token attends to most",
    "pool": "average pooling on the grid",
    "random": "random patches (a baseline)",
    "visionzip": "dominant patches plus merged context tokens",
    "divprune": "the most diverse patches",
    "cdpruner": "relevant and diverse patches (uses the question)",
    "acgr": "DCP-Prune stage 1 only: anchor-context graph recovery",
    "tatcs": "DCP-Prune stage 3 only: text-aware cluster selection",
}


class ChatControls(QWidget):
    """Emits `pruning_changed` when method or budget change, `generation_changed` for the rest."""

    pruning_changed = Signal()
    generation_changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.method = QComboBox(self)
        for index, name in enumerate(METHODS):
            self.method.addItem(name)
            self.method.setItemData(index, METHOD_HINTS.get(name, name), Qt.ItemDataRole.ToolTipRole)
        self.budget = QComboBox(self)
        for tokens in BUDGETS:
            self.budget.addItem(f"{tokens} (all)" if tokens == FULL_TOKENS else str(tokens), tokens)
        self.temperature = QDoubleSpinBox(self, minimum=0.0, maximum=2.0, singleStep=0.1, decimals=2)
        self.temperature.setToolTip("0 = greedy: the same answer every time")
        self.max_tokens = QSpinBox(self, minimum=1, maximum=8192, singleStep=64)
        self.max_tokens.setToolTip("longest answer, in tokens")
        self._layout()
        self.set_pruning(DEFAULT_METHOD, DEFAULT_TOKENS)
        self.method.currentIndexChanged.connect(self._on_pruning)
        self.budget.currentIndexChanged.connect(self._on_pruning)
        self.temperature.valueChanged.connect(self.generation_changed)
        self.max_tokens.valueChanged.connect(self.generation_changed)

    def _layout(self) -> None:
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 8, 4)
        for label, widget in (("Method", self.method), ("Image tokens", self.budget),
                              ("Temperature", self.temperature), ("Max answer", self.max_tokens)):
            row.addWidget(QLabel(label, self))
            row.addWidget(widget)
            row.addSpacing(8)
        row.addStretch(1)

    def set_pruning(self, method: str, n_keep: int) -> None:
        """Show a chat's settings without announcing a change."""
        self.method.blockSignals(True)
        self.budget.blockSignals(True)
        self.method.setCurrentText(method if method in METHODS else DEFAULT_METHOD)
        index = self.budget.findData(n_keep)
        if index < 0:  # a budget set elsewhere (CLI, older version): show it as one more choice
            self.budget.addItem(str(n_keep), n_keep)
            index = self.budget.count() - 1
        self.budget.setCurrentIndex(index)
        self.method.blockSignals(False)
        self.budget.blockSignals(False)
        self._sync_budget_enabled()

    def pruning(self) -> tuple[str, int]:
        return self.method.currentText(), int(self.budget.currentData())

    def _on_pruning(self) -> None:
        self._sync_budget_enabled()
        self.pruning_changed.emit()

    def _sync_budget_enabled(self) -> None:
        full = self.method.currentText() == "full"
        self.budget.setEnabled(not full)
        self.budget.setToolTip("'full' keeps all 576 tokens" if full else "image tokens per image, of 576")
