"""The synthetic VQA benchmark: deterministic, disjoint splits, answers that follow from the scene (re-derived
here independently of the generator), visible objects, a complete vocabulary and a working CLI."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dcp_desktop import scenes
from dcp_desktop.scenes import (ANSWERS, COLOURS, SHAPES, TYPES, WORDS, image_seeds, make_scene,
                                     make_split, normalise_answer, questions_for, render_scene, tokenize)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"]
SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "stars": "star",
            "hexagons": "hexagon", "crosses": "cross"}
MIDDLE = 336 / 2


@pytest.fixture(scope="module")
def validation() -> list[scenes.Item]:
    return make_split("validation", 300, questions_per_image=4)


def _pixels(seed: int) -> np.ndarray:
    return np.asarray(render_scene(seed)[0])  # (336, 336, 3)


def test_same_seed_gives_same_pixels_and_questions():
    assert np.array_equal(_pixels(7), _pixels(7))
    assert make_split("test", 20) == make_split("test", 20)


def test_different_seeds_differ():
    assert not np.array_equal(_pixels(7), _pixels(8))
    standard = [(i.question, i.answer) for i in make_split("test", 20)]
    fresh = [(i.question, i.answer) for i in make_split("test", 20, seed=1)]
    assert standard != fresh


def test_image_is_336_rgb_and_item_rerenders_it():
    item = make_split("train", 1)[0]
    image = item.image()
    assert image.size == (336, 336) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), _pixels(item.image_seed))


def test_splits_are_disjoint_for_every_set_seed():
    largest = scenes.MAX_SET_SEED - 1
    ranges = {name: [image_seeds(name, 1000, seed) for seed in (None, 1, largest)] for name in scenes.SPLIT_BASE}
    for a in ranges:
        for b in ranges:
            if a != b:
                lowest_b, highest_b = min(r.start for r in ranges[b]), max(r.stop for r in ranges[b])
                assert all(r.stop <= lowest_b or r.start >= highest_b for r in ranges[a]), (a, b)


def test_bad_split_arguments_name_the_argument():
    with pytest.raises(ValueError, match="split 'dev'"):
        make_split("dev", 1)
    with pytest.raises(ValueError, match="seed=-1"):
        make_split("test", 1, seed=-1)


# ---- answers re-derived from the scene -----------------------------------------------------------------

def _extent(obj) -> int:
    x0, y0, x1, y1 = obj.bbox
    return max(x1 - x0, y1 - y0)


def _only(objects, **fields):
    found = [o for o in objects if all(getattr(o, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"expected one object with {fields}, found {len(found)}"
    return found[0]


def _derive(question: str, objects) -> str:
    """The answer, from the question text and the objects alone; asserts the question is unambiguous."""
    if m := re.fullmatch(r"Is there a small (\w+) (\w+) in the image\?", question):
        same = [o for o in objects if (o.colour, o.shape) == m.groups()]
        if any(_extent(o) <= 16 for o in same):
            return "yes"
        assert all(o.size >= 32 for o in same), "a 'no' must not hinge on a borderline size"
        return "no"
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question):
        return "yes" if any((o.colour, o.shape) == m.groups() for o in objects) else "no"
    if m := re.fullmatch(r"What colour is the small (\w+)\?", question):
        target = _only([o for o in objects if _extent(o) <= 16], shape=m[1])
        assert all(o is target or o.size >= 32 for o in objects if o.shape == m[1])
        return target.colour
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return _only(objects, shape=m[1]).colour
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return _only(objects, colour=m[1]).shape
    if question == "How many objects are there?":
        return NUMBER_WORDS[len(objects)]
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return NUMBER_WORDS[sum(o.colour == m[1] for o in objects)]
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return NUMBER_WORDS[sum(o.shape == SINGULAR[m[1]] for o in objects)]
    if m := re.fullmatch(r"Is the (\w+) (\w+) (?:on|at) the (\w+) or the (\w+)\?", question):
        return _derive_position(_only(objects, colour=m[1], shape=m[2]), {m[3], m[4]})
    if m := re.fullmatch(r"Which is bigger, the (\w+) (\w+) or the (\w+) (\w+)\?", question):
        a, b = _only(objects, colour=m[1], shape=m[2]), _only(objects, colour=m[3], shape=m[4])
        return _derive_bigger(a, b)
    raise AssertionError(f"no template matches {question!r}")


def _derive_position(obj, options: set[str]) -> str:
    centre = obj.x if options == {"left", "right"} else obj.y
    assert options in ({"left", "right"}, {"top", "bottom"}) and abs(centre - MIDDLE) > 0.15 * 336
    if options == {"left", "right"}:
        return "left" if centre < MIDDLE else "right"
    return "top" if centre < MIDDLE else "bottom"


def _derive_bigger(a, b) -> str:
    big, small = (a, b) if a.area > b.area else (b, a)
    assert big.area > 1.69 * small.area and big.size > 1.3 * small.size, "sizes too close to compare"
    return big.shape if a.shape != b.shape else big.colour


def test_answers_follow_from_the_scene(validation):
    checked = Counter()
    for item in validation:
        objects = make_scene(item.image_seed).objects
        assert _derive(item.question, objects) == item.answer, item
        checked[item.type] += 1
    assert set(checked) == set(TYPES) and sum(checked.values()) == 1200


def _referents(question: str, objects) -> list:
    """The objects a question names: by colour + shape pairs if it has any, else by its one colour or shape."""
    words = tokenize(question)
    pairs = {(a, b) for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES}
    if pairs:
        return [o for o in objects if (o.colour, o.shape) in pairs]
    return [o for o in objects if o.shape in words or o.colour in words]


def test_only_small_questions_name_small_objects(validation):
    for item in validation:
        if item.type in ("colour", "shape", "position", "size"):
            referents = _referents(item.question, make_scene(item.image_seed).objects)
            assert referents and not any(o.is_small for o in referents), item


def test_existence_is_balanced(validation):
    answers = [i.answer for i in validation if i.type == "existence"]
    assert len(answers) >= 150
    assert 0.45 <= answers.count("yes") / len(answers) <= 0.55
    more = make_split("validation", 2000, questions_per_image=2)  # small yes/no questions are rarer
    small = [i.answer for i in more if i.type == "small" and i.answer in ("yes", "no")]
    assert len(small) >= 150
    assert 0.45 <= small.count("yes") / len(small) <= 0.55


def test_every_type_is_present_in_200_images():
    assert {i.type for i in make_split("test", 200)} == set(TYPES)


def test_questions_for_gives_n_distinct_questions():
    scene = make_scene(3)
    questions = questions_for(scene, np.random.default_rng(0), 12)
    assert len(questions) == 12 and len({q.question for q in questions}) == 12
    assert all(q.image_seed == 3 for q in questions)


# ---- pixels -----------------------------------------------------------------------------------------------

def test_small_objects_are_small_and_others_are_not():
    objects = [o for seed in range(300) for o in make_scene(seed).objects]
    small = [o for o in objects if o.is_small]
    assert small and all(_extent(o) <= 16 for o in small)
    assert all(_extent(o) >= 18 for o in objects if not o.is_small)
    assert min(o.size for o in objects) >= 10 and max(o.size for o in objects) <= 120


def test_objects_are_visible_in_their_colour():
    """The centre pixel has the object's colour (no background pixel can: every object colour has a channel
    outside the background's range), and occlusion hides at most a sliver of any object."""
    for seed in range(50):
        image, scene = render_scene(seed)
        pixels = np.asarray(image)  # (336, 336, 3)
        for obj in scene.objects:
            colour = COLOURS[obj.colour]
            assert tuple(pixels[obj.y, obj.x]) == colour, (seed, obj)
            x0, y0, x1, y1 = obj.bbox
            shown = np.all(pixels[y0:y1, x0:x1] == colour, axis=-1).sum()
            assert shown >= 0.85 * obj.area, (seed, obj, shown)


def test_patch_labels_match_the_rendered_pixels():
    """Each labelled patch holds at least 10 pixels of exactly its label's colour; each object's centre patch
    is marked; a patch with no object colour in it is background."""
    colour_of = list(COLOURS.values())
    for seed in range(30):
        image, scene = render_scene(seed)
        patches = np.asarray(image).reshape(24, 14, 24, 14, 3).transpose(0, 2, 1, 3, 4)  # (24, 24, 14, 14, 3)
        labels = scenes.patch_labels(scene)
        assert labels.shape == (24, 24, 3)
        for row, col in zip(*np.nonzero(labels[..., 1])):
            matching = np.all(patches[row, col] == colour_of[labels[row, col, 1] - 1], axis=-1).sum()
            assert matching >= scenes.PATCH_COVER_PX, (seed, row, col, matching)
        assert {(obj.y // 14, obj.x // 14) for obj in scene.objects} == set(zip(*np.nonzero(labels[..., 2])))
        no_object = ~np.any([np.all(patches == c, axis=-1).any((2, 3)) for c in colour_of], axis=0)  # (24, 24)
        assert not labels[no_object, :2].any(), seed
        assert set(labels[..., 0][labels[..., 0] > 0] - 1) <= {SHAPES.index(o.shape) for o in scene.objects}


def test_object_colours_are_distinct_and_far_from_background_and_distractors():
    colours = np.array(list(COLOURS.values()), dtype=float)  # (n_colours, 3)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[~np.eye(len(colours), dtype=bool)].min() > 75
    for seed in range(30):
        image, scene = render_scene(seed)
        outside = np.ones((336, 336), dtype=bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            outside[y0:y1, x0:x1] = False
        rest = np.asarray(image)[outside].astype(float)  # (n_pixels, 3)
        assert np.linalg.norm(rest[:, None] - colours[None], axis=-1).min() > 55, seed


def test_render_time_under_20_ms():
    start = time.perf_counter()
    for seed in range(50):
        render_scene(seed)
    mean_ms = (time.perf_counter() - start) / 50 * 1000
    assert mean_ms < 20, f"rendering takes {mean_ms:.1f} ms per image"


# ---- vocabulary, answers, CLI ----------------------------------------------------------------------------

def test_words_cover_every_question_and_answer():
    items = make_split("train", 300)
    for item in items:
        for token in tokenize(item.question) + tokenize(item.answer):
            assert token in WORDS or token in "?,.", (token, item.question)
        assert item.answer in ANSWERS and item.answer.isalpha()
    assert set(SHAPES) | set(COLOURS) <= WORDS


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("  NO ", "no"), ("3", "three"), ("0", "zero"), ("There are 2.", "two"),
    ("It is purple!", "purple"), ("violet", "purple"), ("Left", "left"), ("the circle", "circle"),
    ("a plus", "cross"), ("banana", "banana"), ("", ""),
])
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


def test_every_answer_normalises_to_itself():
    assert all(normalise_answer(answer) == answer for answer in ANSWERS)


def test_cli_writes_pngs_and_jsonl(tmp_path, capsys):
    scenes.main(["--split", "test", "--n", "3", "--questions-per-image", "2", "--out", str(tmp_path / "out")])
    assert "3 images and 6 questions" in capsys.readouterr().out
    lines = [json.loads(line) for line in (tmp_path / "out" / "test.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and len(list((tmp_path / "out").glob("*.png"))) == 3
    assert all(set(line) == {"image", "question", "answer", "type"} for line in lines)
    first = image_seeds("test", 1)[0]
    assert lines[0]["image"] == str((tmp_path / "out" / f"{first}.png").resolve())
    assert np.array_equal(np.asarray(Image.open(lines[0]["image"])), _pixels(first))
