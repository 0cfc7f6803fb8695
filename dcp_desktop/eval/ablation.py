"""Paired comparisons across dcp-eval runs: one cell of one --json report against a cell of another, on
the same questions (same split, --n and --seed), as ablations need (mass bias on against off, a DCP-Prune
knob against its default).

    python -m dcp_desktop.eval.ablation BASE.json:dcp@16 OTHER.json:dcp@16 [OTHER2.json:divprune@16 ...]

Prints one Markdown row per other cell: its accuracy, retention (against the full-token accuracy of its own
run), and the paired difference to the base cell with its 95% bootstrap interval and McNemar's p
(eval/stats.py). With --questions follow-ups (or first), runs made with --conversation are compared on
those questions alone (--follow-ups keep against reprune). Bad input prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError, run_command
from . import stats


def load_cell(spec: str) -> tuple[dict, dict]:
    """'REPORT.json:method@tokens' → (the report, that cell's result)."""
    path, _, cell = spec.rpartition(":")
    method, _, tokens = cell.partition("@")
    if not path or not method or not tokens.isdigit():
        raise InputError(f"cell: expected REPORT.json:method@tokens, got {spec!r}")
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read a dcp-eval --json report ({error})") from None
    for result in report["results"]:
        if result["method"] == method and result["tokens"] == int(tokens):
            return report, result
    cells = ", ".join(f"{r['method']}@{r['tokens']}" for r in report["results"])
    raise InputError(f"{path}: no cell {method}@{tokens}; it has {cells}")


QUESTIONS = ("all", "first", "follow-ups")  # which questions of a --conversation run are compared


def compare(base: tuple[dict, dict], other: tuple[dict, dict], questions: str = "all") -> dict:
    """The other cell against the base cell, paired question by question (all, or a conversation's first
    questions or follow-ups). Accuracy and retention are the whole cell's."""
    (base_report, base_cell), (other_report, other_cell) = base, other
    ours, theirs = base_cell["outcomes"], other_cell["outcomes"]
    if base_report["split"] != other_report["split"] or len(ours) != len(theirs) \
            or base_report["question_types"] != other_report["question_types"]:
        raise InputError(f"the runs asked different questions ({base_report['split']}, {len(ours)} questions vs "
                         f"{other_report['split']}, {len(theirs)}); run both with the same --split, --n and --seed")
    if questions != "all":
        chosen = [i for i, turn in enumerate(_turns(base_report)) if (turn > 0) == (questions == "follow-ups")]
        ours, theirs = [ours[i] for i in chosen], [theirs[i] for i in chosen]
    diff, interval = stats.paired_difference(ours, theirs)
    return {"accuracy": other_cell["accuracy"], "retention": other_cell["retention"], "diff": diff,
            "ci95": list(interval), "mcnemar_p": stats.mcnemar_p(ours, theirs), "n": len(ours)}


def _turns(report: dict) -> list[int]:
    if not report.get("conversation") or "turns" not in report:
        raise InputError("--questions first/follow-ups: the base run has no conversations; make both runs with "
                         "dcp-eval --conversation")
    return report["turns"]


def row(name: str, result: dict) -> str:
    low, high = result["ci95"]
    return (f"| {name} | {100 * result['accuracy']:.1f}% | {100 * (result['retention'] or 0):.1f}% | "
            f"{100 * result['diff']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {result['mcnemar_p']:.3g} |")


def run(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m dcp_desktop.eval.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="REPORT.json:method@tokens, the cell the others are compared with")
    parser.add_argument("others", nargs="+", help="REPORT.json:method@tokens")
    parser.add_argument("--questions", choices=QUESTIONS, default="all",
                        help="compare on all questions (default), or, for runs made with --conversation, on the "
                             "first questions or the follow-ups alone")
    args = parser.parse_args(argv)
    base = load_cell(args.base)
    paired_on = {"all": "every question", "first": "the first questions", "follow-ups": "the follow-ups"}[args.questions]
    print(f"against {args.base} ({100 * base[1]['accuracy']:.1f}%); accuracy and retention over every question, "
          f"the difference paired on {paired_on}\n")
    print("| cell | accuracy | retention | paired diff [95% CI] | McNemar p |\n|---|---|---|---|---|")
    results = []
    for spec in args.others:
        results.append(compare(base, load_cell(spec), args.questions))
        print(row(spec, results[-1]))
    return results


def main(argv: list[str] | None = None) -> None:
    run_command("ablation", run, argv)


if __name__ == "__main__":
    main()
