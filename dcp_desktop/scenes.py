"""The synthetic VQA benchmark: coloured shapes on textured backgrounds, with answers exact by construction.

    make_scene(seed)                          -> Scene: the objects only (fast, no pixels)
    render_scene(seed)                        -> (336×336 RGB PIL image, Scene)
    patch_labels(scene)                       -> (24, 24, 3) what each 14-px patch shows (training labels)
    questions_for(scene, rng, n)              -> up to n distinct Questions, a balanced mix of TYPES
    make_split(name, n_images, questions_per_image=4, seed=None) -> list[Item]
    questions_about(image_seed, n)            -> the questions one image is asked
    export(items, folder, name)               -> folder/name.jsonl + one PNG per image
    normalise_answer(text)                    -> the answer word in a model's output, for matching
    ANSWERS, WORDS, tokenize(text)            -> the closed answer set; the whole vocabulary

Pruning to 16 of 576 tokens has to matter here: a scene holds 1-8 objects from 10 to 120 px anywhere on the
image, so 16 tokens cannot cover them all, and "small" questions ask about an object ≤ 16 px whose answer
lives in 1-4 of the 14-px patches. The background is a smooth muted gradient with pixel noise, crossed by
thin lines and dotted with specks (distractors, never objects), so uniform patches are rare.

Seeds: image i of split `name` with set seed k (None means 0) has image seed
SPLIT_BASE[name] + k * SET_STRIDE + i, so the splits never share an image (train from 0, validation from
10**15, test from 2 * 10**15) and another k gives a fresh set from the same distribution. The seed alone
fixes the layout, the pixels and the questions (three independent NumPy streams), so an Item stores the
seed and re-renders its image on demand (`item.image()`, a few ms).

CLI, for eyeballing: python -m dcp_desktop.scenes --split test --n 8 --out DIR
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 336  # CLIP ViT-L/14-336: a 24×24 grid of 14-px patches, 576 visual tokens
PATCH = 14
GRID = IMAGE_SIZE // PATCH

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "hexagon": "hexagons", "cross": "crosses"}
# Saturated or extreme colours, far from the muted mid-tone backgrounds and from each other.
COLOURS = {"red": (215, 35, 35), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (40, 165, 60),
           "blue": (35, 80, 215), "purple": (145, 55, 190), "white": (245, 245, 245), "black": (20, 20, 20)}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
TYPES = ("existence", "colour", "shape", "count", "position", "size", "small")

MAX_OBJECTS = 8
PATCH_COVER_PX = 10  # of a patch's 196 pixels: fewer, and patch_labels calls the patch background
SMALL_MAX_PX = 16  # a "small" object: its bounding box spans at most 2×2 patches
SMALL_SHARE = 0.25  # of objects drawn small; the others are 20-120 px, log-uniform
CLEARLY_LARGER_PX = 32  # "the small star" only when every other star is at least this big
MAX_OVERLAP = 0.1  # of the smaller bounding box; below 0.25 no object's centre can be covered
SAME_COLOUR_GAP_PX = 3  # between the bounding boxes of two objects of one colour
PLACEMENT_TRIES = 50
MARGIN_PX = 2
OFF_CENTRE_PX = 0.15 * IMAGE_SIZE  # left/right/top/bottom only when the centre is this far from the middle
BIGGER_RATIO = 1.3  # "which is bigger" only when both extent and area differ by this (area: squared)
BACKGROUND_RANGE = (75, 190)  # channel values of the background before its ±10 noise
HARD_NEGATIVE_SHARE = 0.6  # absent pairs whose colour or shape is in the scene (POPE "adversarial")

SPLIT_BASE = {"train": 0, "validation": 10**15, "test": 2 * 10**15}
SET_STRIDE = 10**9  # image seeds per set: n_images must stay below it
MAX_SET_SEED = 10**6  # keeps every set of a split below the next split's base

_LAYOUT_STREAM, _PIXEL_STREAM, _QUESTION_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape. (x, y) is its centre pixel, which it always covers; `size` is the side of the
    square canvas it is drawn on; `bbox` = (x0, y0, x1, y1), end-exclusive, of the pixels it covers;
    `area` counts those pixels when the object is drawn alone."""

    shape: str
    colour: str
    x: int
    y: int
    size: int
    bbox: tuple[int, int, int, int]
    area: int

    @property
    def is_small(self) -> bool:
        return self.size <= SMALL_MAX_PX


@dataclass(frozen=True)
class Scene:
    """What an image shows, in drawing order (largest first, so small objects are never hidden)."""

    seed: int
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class Question:
    """One question about one image; the image is re-rendered from its seed when needed."""

    image_seed: int
    question: str
    answer: str
    type: str

    def image(self) -> Image.Image:
        return render_scene(self.image_seed)[0]

    def record(self) -> dict:
        return asdict(self)


Item = Question  # a split's items are its questions


# ---- layout ---------------------------------------------------------------------------------------------

def make_scene(seed: int) -> Scene:
    """The objects of image `seed`: 1-8 random shapes and colours, placed without heavy overlap.
    An object that finds no free place in PLACEMENT_TRIES tries is left out."""
    rng = _stream(seed, _LAYOUT_STREAM)
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    # Largest first: they are the hardest to fit, and drawing them first keeps small ones on top.
    sizes = sorted((_random_size(rng) for _ in range(n_objects)), reverse=True)
    placed: list[SceneObject] = []
    for size in sizes:
        obj = _place(rng, size, placed)
        if obj is not None:
            placed.append(obj)
    return Scene(seed, tuple(placed))


def _random_size(rng: np.random.Generator) -> int:
    if rng.random() < SMALL_SHARE:
        return int(rng.integers(10, SMALL_MAX_PX + 1))
    return int(round(math.exp(rng.uniform(math.log(20), math.log(120)))))


def _place(rng: np.random.Generator, size: int, placed: list[SceneObject]) -> SceneObject | None:
    shape, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    _, area, (bx0, by0, bx1, by1) = _shape_mask(shape, size)
    for _ in range(PLACEMENT_TRIES):
        left, top = (int(v) for v in rng.integers(MARGIN_PX, IMAGE_SIZE - MARGIN_PX - size + 1, size=2))
        bbox = (left + bx0, top + by0, left + bx1, top + by1)
        if not any(_too_close(bbox, colour, other) for other in placed):
            return SceneObject(shape, colour, left + size // 2, top + size // 2, size, bbox, area)
    return None


def _too_close(bbox: tuple[int, int, int, int], colour: str, other: SceneObject) -> bool:
    """Heavy overlap; or any contact with an object of the same colour, which would merge the two shapes."""
    if colour == other.colour:
        x0, y0, x1, y1 = other.bbox
        return _overlap_fraction(bbox, (x0 - SAME_COLOUR_GAP_PX, y0 - SAME_COLOUR_GAP_PX,
                                        x1 + SAME_COLOUR_GAP_PX, y1 + SAME_COLOUR_GAP_PX)) > 0
    return _overlap_fraction(bbox, other.bbox) > MAX_OVERLAP


def _overlap_fraction(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


@functools.lru_cache(maxsize=None)  # 6 shapes × 111 sizes at most
def _shape_mask(shape: str, size: int) -> tuple[Image.Image, int, tuple[int, int, int, int]]:
    """The shape alone on a size×size "L" canvas (255 inside), centred on pixel (size // 2, size // 2);
    with its pixel count and its bbox on the canvas. Callers must not modify the mask."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, size - 1, size - 1), fill=255)
    else:
        draw.polygon(_outline(shape, size), fill=255)
    return mask, mask.histogram()[255], mask.getbbox()


def _outline(shape: str, size: int) -> list[tuple[float, float]]:
    """The polygon of an upright shape filling a size×size canvas."""
    c = r = (size - 1) / 2  # centre and outer radius

    def ring(n: int, radii: Sequence[float], start_deg: float) -> list[tuple[float, float]]:
        angles = [math.radians(start_deg + 360 * k / n) for k in range(n)]
        return [(c + radii[k % len(radii)] * math.cos(a), c + radii[k % len(radii)] * math.sin(a))
                for k, a in enumerate(angles)]

    if shape == "square":
        return [(0, 0), (size - 1, 0), (size - 1, size - 1), (0, size - 1)]
    if shape == "triangle":
        return [(c, 0), (size - 1, size - 1), (0, size - 1)]
    if shape == "star":
        return ring(10, (r, 0.45 * r), -90)  # fatter than a pentagram, so it stays a star when tiny
    if shape == "hexagon":
        return ring(6, (r,), 0)
    if shape == "cross":
        w = r / 3  # half the arm width: arms a third of the size wide
        return [(c - w, 0), (c + w, 0), (c + w, c - w), (2 * c, c - w), (2 * c, c + w), (c + w, c + w),
                (c + w, 2 * c), (c - w, 2 * c), (c - w, c + w), (0, c + w), (0, c - w), (c - w, c - w)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


# ---- pixels ---------------------------------------------------------------------------------------------

def render_scene(seed: int) -> tuple[Image.Image, Scene]:
    """Image `seed` (336×336 RGB) and what it shows: background, distractors, then the objects."""
    scene = make_scene(seed)
    rng = _stream(seed, _PIXEL_STREAM)
    image = Image.fromarray(_background(rng))
    _draw_distractors(ImageDraw.Draw(image), rng)
    for obj in scene.objects:
        mask, _, _ = _shape_mask(obj.shape, obj.size)
        image.paste(COLOURS[obj.colour], (obj.x - obj.size // 2, obj.y - obj.size // 2), mask)
    return image, scene


def patch_labels(scene: Scene) -> np.ndarray:
    """Per 14-px patch: [shape index + 1, colour index + 1, 1 if an object's centre pixel is in it], (24, 24, 3)
    int64, 0 meaning background. A patch shows the object with the most visible pixels in it, if it has at
    least PATCH_COVER_PX; distractors count as background. The demo model's vision tower learns from these."""
    return labels_of(scene, patch_owners(scene))


def patch_owners(scene: Scene) -> np.ndarray:
    """(24, 24) int: the object (1-based, in scene.objects' order) each patch shows, 0 for background: the
    object with the most visible pixels in the patch, if it has at least PATCH_COVER_PX."""
    owner = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)  # which object (1-based) each pixel shows, drawn as rendered
    for number, obj in enumerate(scene.objects, 1):
        mask, _, _ = _shape_mask(obj.shape, obj.size)
        owner.paste(number, (obj.x - obj.size // 2, obj.y - obj.size // 2), mask)
    pixels = np.asarray(owner).reshape(GRID, PATCH, GRID, PATCH).transpose(0, 2, 1, 3).reshape(GRID, GRID, -1)
    counts = (pixels[..., None] == np.arange(1, len(scene.objects) + 1)).sum(2)  # (24, 24, n_objects)
    return np.where(counts.max(2, initial=0) >= PATCH_COVER_PX, counts.argmax(2) + 1, 0)


def labels_of(scene: Scene, owners: np.ndarray) -> np.ndarray:
    """patch_labels from patch_owners(scene), for a caller that needs both."""
    labels = np.zeros((GRID, GRID, 3), np.int64)
    for number, obj in enumerate(scene.objects, 1):
        shows = owners == number
        labels[shows, 0] = SHAPES.index(obj.shape) + 1
        labels[shows, 1] = list(COLOURS).index(obj.colour) + 1
        labels[obj.y // PATCH, obj.x // PATCH, 2] = 1
    return labels


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth random gradient of muted colours plus pixel noise: (336, 336, 3) uint8."""
    cells = int(rng.integers(2, 6))
    base = np.array(_muted_colour(rng))
    # Mostly lighter/darker blotches, a little hue drift: independent channels would wander into object hues.
    grid = base + rng.normal(0, 20, (cells, cells, 1)) + rng.normal(0, 5, (cells, cells, 3))  # (cells, cells, 3)
    # Mid-tones only, so no background pixel passes for a white or black object.
    grid = np.clip(grid, *BACKGROUND_RANGE).astype(np.uint8)
    smooth = Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    noise = rng.integers(-10, 11, (IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.int16)  # grey: keeps the hue muted
    return (np.asarray(smooth, dtype=np.int16) + noise).astype(np.uint8)  # (336, 336, 3)


def _muted_colour(rng: np.random.Generator, value_range: tuple[float, float] = (0.4, 0.68)) -> tuple[int, ...]:
    """Low saturation, mid value: far from every object colour, white and black included."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.04, 0.22), rng.uniform(*value_range))
    return tuple(int(255 * v) for v in rgb)


def _draw_distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Thin lines and specks (≤ 5 px) in muted tones: clutter that no question is about."""
    for _ in range(rng.integers(1, 7)):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, IMAGE_SIZE, 4))
        draw.line((x0, y0, x1, y1), fill=_muted_colour(rng, (0.28, 0.78)), width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(0, 26)):
        x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE, 2))
        radius = int(rng.integers(1, 3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_muted_colour(rng, (0.28, 0.78)))


# ---- questions ------------------------------------------------------------------------------------------
# Each template returns (question, answer), or None when the scene cannot support it unambiguously.
# Objects are named by colour + shape only when that pair is unique; except for counts and existence,
# only "small" questions are about objects ≤ SMALL_MAX_PX.

def questions_for(scene: Scene, rng: np.random.Generator, n: int) -> list[Question]:
    """n distinct questions about `scene`, cycling through TYPES in a random order and skipping a type the
    scene cannot support. Existence and count always can, with dozens of distinct questions, so fewer than
    n come back only for large n (none short for n = 20 over 2000 scenes)."""
    order = [TYPES[i] for i in rng.permutation(len(TYPES))]
    questions: list[Question] = []
    asked: set[str] = set()
    for attempt in range(20 * n):
        if len(questions) == n:
            break
        kind = order[attempt % len(order)]
        made = _TEMPLATES[kind](scene, rng)
        if made is not None and made[0] not in asked:
            asked.add(made[0])
            questions.append(Question(scene.seed, made[0], made[1], kind))
    return questions


def _existence(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.5:
        obj = _pick(rng, scene.objects)
        colour, shape, answer = obj.colour, obj.shape, "yes"
    else:
        colour, shape = _absent_pair(scene, rng, scene.objects)
        answer = "no"
    return f"Is there a {colour} {shape} in the image?", answer


def _absent_pair(scene: Scene, rng: np.random.Generator, present: Sequence[SceneObject]) -> tuple[str, str]:
    """A (colour, shape) that no object in `present` has; mostly a hard one, whose colour or shape is in
    the scene (a red star when there is a red circle and a blue star)."""
    taken = {(o.colour, o.shape) for o in present}
    absent = [pair for pair in itertools.product(COLOURS, SHAPES) if pair not in taken]
    colours, shapes = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
    hard = [(c, s) for c, s in absent if c in colours or s in shapes]
    return _pick(rng, hard if hard and rng.random() < HARD_NEGATIVE_SHARE else absent)


def _colour(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    targets = [o for o in scene.objects if not o.is_small and _count(scene, shape=o.shape) == 1]
    if not targets:
        return None
    obj = _pick(rng, targets)
    return f"What colour is the {obj.shape}?", obj.colour


def _shape(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    targets = [o for o in scene.objects if not o.is_small and _count(scene, colour=o.colour) == 1]
    if not targets:
        return None
    obj = _pick(rng, targets)
    return f"What shape is the {obj.colour} object?", obj.shape


def _count_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    form = rng.integers(3)
    if form == 0:
        return "How many objects are there?", NUMBERS[len(scene.objects)]
    everything = rng.random() < 0.25  # sometimes a shape or colour that may be absent: answer "zero"
    if form == 1:
        shape = _pick(rng, SHAPES if everything else [o.shape for o in scene.objects])
        return f"How many {PLURALS[shape]} are there?", NUMBERS[_count(scene, shape=shape)]
    colour = _pick(rng, list(COLOURS) if everything else [o.colour for o in scene.objects])
    return f"How many {colour} objects are there?", NUMBERS[_count(scene, colour=colour)]


def _position(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    middle = IMAGE_SIZE / 2
    options = [(o, axis, centre) for o in _nameable(scene) for axis, centre in (("x", o.x), ("y", o.y))
               if abs(centre - middle) > OFF_CENTRE_PX]
    if not options:
        return None
    obj, axis, centre = _pick(rng, options)
    low, high, preposition = ("left", "right", "on") if axis == "x" else ("top", "bottom", "at")
    answer = low if centre < middle else high
    first, second = (low, high) if rng.random() < 0.5 else (high, low)
    return f"Is the {obj.colour} {obj.shape} {preposition} the {first} or the {second}?", answer


def _size(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """Answered with the shape word when the shapes differ, else with the colour word."""
    pairs = [(a, b) for a, b in itertools.combinations(_nameable(scene), 2)
             if _clearly_bigger(a, b) or _clearly_bigger(b, a)]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:
        a, b = b, a
    bigger = a if _clearly_bigger(a, b) else b
    answer = bigger.shape if a.shape != b.shape else bigger.colour
    return f"Which is bigger, the {a.colour} {a.shape} or the {b.colour} {b.shape}?", answer


def _clearly_bigger(a: SceneObject, b: SceneObject) -> bool:
    """Bigger both in extent and in area, so a spiky star never 'wins' against a solid square by extent alone."""
    return a.size > BIGGER_RATIO * b.size and a.area > BIGGER_RATIO**2 * b.area


def _small(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    small = [o for o in scene.objects if o.is_small]
    if not small:
        return None
    unique = [o for o in small if all(p is o or p.size >= CLEARLY_LARGER_PX
                                      for p in scene.objects if p.shape == o.shape)]
    if unique and rng.random() < 0.5:
        obj = _pick(rng, unique)
        return f"What colour is the small {obj.shape}?", obj.colour
    if rng.random() < 0.5:
        obj = _pick(rng, small)
        colour, shape, answer = obj.colour, obj.shape, "yes"
    else:  # absent even at sizes that could pass for small
        colour, shape = _absent_pair(scene, rng, [o for o in scene.objects if o.size < CLEARLY_LARGER_PX])
        answer = "no"
    return f"Is there a small {colour} {shape} in the image?", answer


_TEMPLATES: dict[str, Callable[[Scene, np.random.Generator], tuple[str, str] | None]] = {
    "existence": _existence, "colour": _colour, "shape": _shape, "count": _count_question,
    "position": _position, "size": _size, "small": _small,
}

# Every template's fixed words, for WORDS; the placeholders are filled from SHAPES, PLURALS and COLOURS.
_TEMPLATE_TEXT = ("is there a small in the image? what colour is the small? what shape is the object? "
                  "how many objects are there? is the on the left or the right? at the top or the bottom? "
                  "which is bigger, the or the?")


def _nameable(scene: Scene) -> list[SceneObject]:
    """Objects that are not small and are the only one of their colour and shape."""
    return [o for o in scene.objects if not o.is_small and _count(scene, colour=o.colour, shape=o.shape) == 1]


def _count(scene: Scene, colour: str | None = None, shape: str | None = None) -> int:
    return sum(1 for o in scene.objects if colour in (None, o.colour) and shape in (None, o.shape))


def _pick(rng: np.random.Generator, options: Sequence):
    return options[rng.integers(len(options))]


# ---- vocabulary and answer matching ---------------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Lower-case words and the punctuation "?,." — how WORDS covers every question and answer."""
    return re.findall(r"[a-z]+|[?,.]", text.lower())


ANSWERS = frozenset({"yes", "no", "left", "right", "top", "bottom", *SHAPES, *COLOURS, *NUMBERS})
WORDS = frozenset(w for w in tokenize(_TEMPLATE_TEXT) if w.isalpha()) | ANSWERS | frozenset(PLURALS.values())

_SYNONYMS = {**{str(i): word for i, word in enumerate(NUMBERS)}, "none": "zero", "color": "colour",
             "violet": "purple", "plus": "cross", "upper": "top", "lower": "bottom"}


def normalise_answer(text: str) -> str:
    """The first closed-set answer word in `text` ("Yes." -> "yes", "3" -> "three", "It is purple" ->
    "purple"), after lower-casing, dropping punctuation and mapping synonyms; the cleaned text when it has
    none, so it matches no answer."""
    words = [_SYNONYMS.get(w, w) for w in re.findall(r"[a-z0-9]+", text.lower())]
    return next((w for w in words if w in ANSWERS), " ".join(words))


# ---- splits ---------------------------------------------------------------------------------------------

def image_seeds(name: str, n_images: int, seed: int | None = None) -> range:
    """The image seeds of a split: SPLIT_BASE[name] + seed * SET_STRIDE + (0 .. n_images - 1)."""
    if name not in SPLIT_BASE:
        raise ValueError(f"split {name!r}: expected one of {', '.join(SPLIT_BASE)}")
    if not 0 <= n_images < SET_STRIDE:
        raise ValueError(f"n_images={n_images}: expected 0 to {SET_STRIDE - 1}")
    set_seed = 0 if seed is None else seed
    if not 0 <= set_seed < MAX_SET_SEED:
        raise ValueError(f"seed={seed}: expected 0 to {MAX_SET_SEED - 1} (or None for the standard set)")
    start = SPLIT_BASE[name] + set_seed * SET_STRIDE
    return range(start, start + n_images)


def make_split(name: str, n_images: int, questions_per_image: int = 4, seed: int | None = None) -> list[Item]:
    """`questions_per_image` questions for each of the split's images, image by image. Only layouts are
    computed here; pixels are rendered by `item.image()`."""
    return [item for image_seed in image_seeds(name, n_images, seed)
            for item in questions_about(image_seed, questions_per_image)]


def questions_about(image_seed: int, n: int) -> list[Question]:
    """The questions image `image_seed` is asked in any split: up to n, from its own question stream."""
    return questions_for(make_scene(image_seed), _stream(image_seed, _QUESTION_STREAM), n)


def export(items: Sequence[Item], folder: str | Path, name: str = "questions") -> Path:
    """Write one PNG per image (named by its seed) and folder/name.jsonl, one line per item:
    {"image": absolute PNG path, "question", "answer", "type"} — the format dcp-eval reads."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for image_seed in dict.fromkeys(item.image_seed for item in items):
        render_scene(image_seed)[0].save(folder / f"{image_seed}.png")
    jsonl = folder / f"{name}.jsonl"
    with open(jsonl, "w", encoding="utf-8") as file:
        for item in items:
            line = {"image": str(folder / f"{item.image_seed}.png"), "question": item.question,
                    "answer": item.answer, "type": item.type}
            file.write(json.dumps(line) + "\n")
    return jsonl


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.scenes",
                                     description="Write a split's images (PNG) and questions (JSONL) to look at.")
    parser.add_argument("--split", choices=list(SPLIT_BASE), default="test")
    parser.add_argument("--n", type=int, default=8, help="number of images (default 8)")
    parser.add_argument("--questions-per-image", type=int, default=4, help="(default 4)")
    parser.add_argument("--seed", type=int, default=None,
                        help="another set from the same distribution (default: the standard set)")
    parser.add_argument("--out", required=True, help="folder to write into (created if missing)")
    args = parser.parse_args(argv)
    items = make_split(args.split, args.n, args.questions_per_image, args.seed)
    jsonl = export(items, args.out, args.split)
    print(f"wrote {args.n} images and {len(items)} questions to {jsonl.parent} ({jsonl.name})")


if __name__ == "__main__":
    main()
