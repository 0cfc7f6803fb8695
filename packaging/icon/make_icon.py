"""Draw the app icon: an image cut into patches, a few of them kept (the visual tokens the model
sees), inside a speech bubble. Writes dcp-desktop-{48,256,512}.png beside this file.

    python packaging/icon/make_icon.py

macOS and Windows builds turn the 512 px one into .icns / .ico (see packaging/macos, packaging/windows).
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 1024  # drawn large, scaled down
KEPT = {(0, 4), (1, 1), (2, 3), (3, 0), (3, 4), (4, 2)}  # (row, col) of the bright patches


def draw() -> Image.Image:
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    # the bubble: a rounded square with a tail at the bottom left
    d.rounded_rectangle((64, 64, 960, 850), radius=180, fill=(32, 44, 92, 255))
    d.polygon([(210, 800), (180, 980), (400, 830)], fill=(32, 44, 92, 255))
    # 5 x 5 patches; the kept ones bright, the rest faint
    n, cell, gap = 5, 124, 22
    x0 = (SIZE - (n * cell + (n - 1) * gap)) // 2
    y0 = 118
    for r in range(n):
        for c in range(n):
            x, y = x0 + c * (cell + gap), y0 + r * (cell + gap)
            colour = (255, 160, 48, 255) if (r, c) in KEPT else (86, 104, 170, 255)
            d.rounded_rectangle((x, y, x + cell, y + cell), radius=26, fill=colour)
    return img


def main() -> None:
    big = draw()
    for size in (48, 256, 512):
        big.resize((size, size), Image.LANCZOS).save(HERE / f"dcp-desktop-{size}.png", optimize=True)


if __name__ == "__main__":
    main()
