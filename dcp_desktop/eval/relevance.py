"""Does a text signal find the object a question names? The relevance AUC that decides whether TATCS
gets a text term (DESIGN.md, DCP-Prune step 3: only with an AUC of at least 0.6 on validation).

    python -m dcp_desktop.eval.relevance [--model demo] [--split validation] [--n 50] [--json FILE]

For every benchmark question that names objects its image shows (a colour word and/or a shape word that
match at least one object, and at least one patch that shows something else), every patch gets a score
from each signal; the AUC is the chance that a patch of a named object scores above one that is not
(ties count half). Prints the median AUC over the questions per signal. The signals:
- `all_words`: TATCS's relevance as the first build had it: max over the question's tokens of
  cos(x_i, u_t), u_t = the token's embedding taken into the vision feature space (vision.text_to_features);
- `content_words`: the same over the tokens of the question's colour and shape words only;
- `llm_space`: max over those content tokens of cos(P(x_i), e_t), the projected row against the token's
  embedding in the LLM's own space;
- `cls`: [CLS] attention, with no text at all (the yardstick).
"""

from __future__ import annotations

import argparse

import numpy as np

from .. import cli_options, models, scenes
from ..errors import InputError, run_command
from ..pipeline import Pipeline, PipelineOptions
from . import stats
from .report import write_json

SIGNALS = ("all_words", "content_words", "llm_space", "cls")
CONTENT_WORDS = frozenset(scenes.SHAPES) | frozenset(scenes.COLOURS) | frozenset(scenes.PLURALS.values())


def auc(scores, positive) -> float | None:
    """P(score of a positive > score of a negative), ties counting half (the Mann-Whitney U / n+·n-);
    None without positives or negatives."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats._ranks(scores)  # tied scores share their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def named_patches(question: str, scene: scenes.Scene) -> np.ndarray | None:
    """(576,) bool: the patches showing an object the question names (its colour and shape words, those it
    gives); None when it names no colour or shape, or no object of the scene matches."""
    words = scenes.tokenize(question)
    singular = {plural: shape for shape, plural in scenes.PLURALS.items()}
    shapes = {singular.get(w, w) for w in words} & set(scenes.SHAPES)
    colours = set(words) & set(scenes.COLOURS)
    if not shapes and not colours:
        return None
    matching = [number for number, obj in enumerate(scene.objects, 1)
                if (not shapes or obj.shape in shapes) and (not colours or obj.colour in colours)]
    if not matching:
        return None
    return np.isin(scenes.patch_owners(scene), matching).ravel()


def content_words(question: str) -> list[str]:
    return [w for w in scenes.tokenize(question) if w in CONTENT_WORDS]


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _max_cosine(rows: np.ndarray, text: np.ndarray) -> np.ndarray:
    """(n,) max over the text rows of cos(row_i, text_t)."""
    return (_unit(rows.astype(np.float64)) @ _unit(text.astype(np.float64)).T).max(axis=1)


def signal_scores(pipe: Pipeline, features: np.ndarray, cls_attn: np.ndarray, question: str) -> dict:
    """Each signal's (576,) scores for one image and question."""
    content_ids = [i for word in content_words(question) for i in pipe.engine.tokenize(" " + word)[-1:]]
    all_ids = pipe.engine.tokenize(question)
    embed = pipe.token_embeddings.rows
    return {
        "all_words": _max_cosine(features, pipe.vision.text_to_features(embed(all_ids))),
        "content_words": _max_cosine(features, pipe.vision.text_to_features(embed(content_ids))),
        "llm_space": _max_cosine(pipe.vision.project(features), embed(content_ids)),
        "cls": cls_attn.astype(np.float64),
    }


def measure(pipe: Pipeline, split: str, n_images: int) -> dict:
    """AUC per signal per question that names an object, and the medians."""
    per_signal: dict[str, list[float]] = {name: [] for name in SIGNALS}
    for item in scenes.make_split(split, n_images):
        scene = scenes.make_scene(item.image_seed)
        positive = named_patches(item.question, scene)
        if positive is None or positive.all():
            continue
        image = pipe.encode_image(item.image())
        for name, scores in signal_scores(pipe, image.features, image.cls_attn, item.question).items():
            value = auc(scores, positive)
            if value is not None:
                per_signal[name].append(value)
    return {"split": split, "n_images": n_images, "n_questions": len(per_signal["cls"]),
            "median_auc": {name: float(np.median(v)) if v else None for name, v in per_signal.items()},
            "auc": per_signal}


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.relevance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--n", type=cli_options.whole_number, default=50, help="images (default 50)")
    parser.add_argument("--json", default=None, metavar="FILE")
    cli_options.add_model_options(parser, default="demo")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise InputError(f"--n: expected at least 1 image, got {args.n}")
    with Pipeline(models.resolve(args.model, args.mmproj), PipelineOptions(vision_dtype="float32")) as pipe:
        result = measure(pipe, args.split, args.n)
    print(f"{result['n_questions']} {args.split} questions that name an object; median AUC of the named "
          "object's patches against the rest:")
    for name, value in result["median_auc"].items():
        print(f"  {name:14s} {'-' if value is None else f'{value:.3f}'}")
    if args.json:
        write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> None:
    run_command("relevance", run, argv)


if __name__ == "__main__":
    main()
