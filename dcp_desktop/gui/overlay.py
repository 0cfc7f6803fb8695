"""What the model sees: the kept patches of an image, drawn on the square the vision tower gets.

LLaVA-1.5 pads every image to a square (`expand_to_square`, mean colour) and cuts the 336-px square
into a 24×24 grid of 14-px patches. The overlay therefore shows the image padded the same way, so
every grid cell, padding included, lands where the model saw it: a token spent on padding is
visible as such. Everything else is dimmed; each kept cell gets a frame, and a kept token that
absorbed other patches (mass > 1) a stronger fill and its mass as a number.

When a per-patch `assignment` is present (n_full ints: the kept token each patch went to, as an
index into `indices`, or -1 for a dropped patch), every patch is tinted with its token's colour,
so the region each token stands for shows as one cluster.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

from PIL import Image
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from ..image import expand_to_square

KEPT_COLOUR = QColor(255, 196, 0)  # amber: readable on photos, screenshots and both palettes
DIM_COLOUR = QColor(0, 0, 0, 150)
MIN_LABEL_CELL_PX = 12  # below this a mass number would not be legible
TILE_PX = 260  # the longest side of an image in a chat bubble
SQUARE_PX = 336  # the overlay: the model's own resolution, one 14-px cell per patch


@dataclass(frozen=True)
class Overlay:
    """The kept patches of one image (raster order on the grid) and what they stand for."""

    indices: tuple[int, ...]  # (K,) kept grid patches, ascending
    masses: tuple[float, ...]  # (K,) original patches each kept token stands for
    kappa: float | None  # κ: the share of the patches the kept ones leave uncovered
    n_full: int  # patches on the grid (576)
    background: tuple[int, int, int]  # the padding colour the model saw
    assignment: tuple[int, ...] | None = None  # (n_full,) kept token of each patch, -1 dropped

    @property
    def grid(self) -> int:
        return math.isqrt(self.n_full)

    def caption(self) -> str:
        kappa = "" if self.kappa is None else f" · κ {self.kappa:.2f}"
        heaviest = round(max(self.masses, default=1.0))
        merged = f" · up to {heaviest} patches per token" if heaviest > 1 else ""
        return f"{len(self.indices)} of {self.n_full} tokens{kappa}{merged}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Overlay:
        assignment = values.get("assignment")
        return cls(tuple(int(i) for i in values["indices"]), tuple(float(m) for m in values["masses"]),
                   values.get("kappa"), int(values["n_full"]), tuple(values["background"]),
                   None if assignment is None else tuple(int(a) for a in assignment))


def paint_overlay(painter: QPainter, square: QRectF, overlay: Overlay) -> int:
    """Draw `overlay` over `square` (the padded image's area); returns the kept cells drawn."""
    cell = square.width() / overlay.grid
    if overlay.assignment is not None:
        _paint_clusters(painter, square, overlay, cell)
    else:
        _dim_dropped(painter, square, overlay, cell)
    return _paint_kept(painter, square, overlay, cell)


def _cell_rect(square: QRectF, grid: int, patch: int, cell: float) -> QRectF:
    row, col = divmod(patch, grid)
    return QRectF(square.left() + col * cell, square.top() + row * cell, cell, cell)


def _dim_dropped(painter: QPainter, square: QRectF, overlay: Overlay, cell: float) -> None:
    kept = set(overlay.indices)
    for patch in range(overlay.n_full):
        if patch not in kept:
            painter.fillRect(_cell_rect(square, overlay.grid, patch, cell), DIM_COLOUR)


def cluster_colour(token: int) -> QColor:
    """A distinct hue per kept token (golden-angle steps), translucent."""
    return QColor.fromHsvF((token * 0.618034) % 1.0, 0.75, 1.0, 0.45)


def _paint_clusters(painter: QPainter, square: QRectF, overlay: Overlay, cell: float) -> None:
    for patch, token in enumerate(overlay.assignment):
        colour = DIM_COLOUR if token < 0 else cluster_colour(token)
        painter.fillRect(_cell_rect(square, overlay.grid, patch, cell), colour)


def _paint_kept(painter: QPainter, square: QRectF, overlay: Overlay, cell: float) -> int:
    heaviest = max(overlay.masses, default=1.0)
    painter.setFont(_label_font(cell))
    for patch, mass in zip(overlay.indices, overlay.masses):
        rect = _cell_rect(square, overlay.grid, patch, cell)
        fill = QColor(KEPT_COLOUR)
        # More absorbed patches, stronger fill (log scale: masses run from 1 to a few hundred).
        fill.setAlphaF(0.15 + 0.5 * (math.log(mass) / math.log(heaviest) if heaviest > 1 else 0.0))
        painter.fillRect(rect, fill)
        painter.setPen(QPen(KEPT_COLOUR, max(1.0, cell / 8)))
        painter.drawRect(rect.adjusted(0.5, 0.5, -0.5, -0.5))
        if round(mass) > 1 and cell >= MIN_LABEL_CELL_PX:
            painter.setPen(Qt.GlobalColor.black)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(round(mass)))
    return len(overlay.indices)


def _label_font(cell: float) -> QFont:
    font = QFont()
    font.setPixelSize(max(6, int(cell * 0.5)))
    font.setBold(True)
    return font


def _to_qimage(image: Image.Image) -> QImage:
    rgb = image.convert("RGB")
    width, height = rgb.size
    return QImage(rgb.tobytes(), width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def _open_thumbnail(thumbnail: str | bytes) -> Image.Image:
    source = io.BytesIO(thumbnail) if isinstance(thumbnail, bytes) else thumbnail
    with Image.open(source) as image:
        return image.convert("RGB")


class OverlayImage(QWidget):
    """An image thumbnail that can show, instead, the padded square with the kept patches."""

    def __init__(self, thumbnail: str | bytes, parent=None):
        super().__init__(parent)
        self._thumbnail = _open_thumbnail(thumbnail)  # PIL RGB, the image as load_image decoded it
        self._plain = _to_qimage(self._thumbnail)
        self._square: QImage | None = None  # the padded view, made when first shown
        self._overlay: Overlay | None = None
        self._showing = False
        self.cells_drawn = 0  # kept cells in the last paint (tests read it)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self._resize()

    def set_overlay(self, overlay: Overlay | None) -> None:
        if overlay is None or self._overlay is None or overlay.background != self._overlay.background:
            self._square = None
        self._overlay = overlay
        self._showing = self._showing and overlay is not None
        self._resize()
        self.update()

    def show_overlay(self, on: bool) -> None:
        self._showing = on and self._overlay is not None
        self._resize()
        self.update()

    @property
    def overlay_shown(self) -> bool:
        return self._showing

    def _resize(self) -> None:
        if self._showing:
            self.setFixedSize(SQUARE_PX, SQUARE_PX)
        else:
            self.setFixedSize(self._plain.size().scaled(QSize(TILE_PX, TILE_PX), Qt.AspectRatioMode.KeepAspectRatio))

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        target = QRectF(self.rect())
        if self._showing:
            painter.drawImage(target, self._square_image())
            self.cells_drawn = paint_overlay(painter, target, self._overlay)
        else:
            painter.drawImage(target, self._plain)
            self.cells_drawn = 0
        painter.end()

    def _square_image(self) -> QImage:
        if self._square is None:
            self._square = _to_qimage(expand_to_square(self._thumbnail, self._overlay.background))
        return self._square
