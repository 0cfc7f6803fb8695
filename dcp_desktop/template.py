"""The chat template: LLaVA-1.5's Vicuna-v1 conversation, the one place its text is spelled out.

    <s>{SYSTEM} USER: [image rows]\\n{question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: {answer}</s>…

The engine decodes a conversation piece by piece, and llama.cpp's SentencePiece tokenizer puts a word-start
space in front of every piece it tokenises, so the token ids depend on where the text is cut. The pieces
below are the cuts: the engine, the demo model's training recipe (which was trained on exactly these ids),
the benchmarks and the tests all build their ids here. Changing a piece changes what the demo model reads.

Every function takes `encode`, the tokenizer of whoever asks (llama.cpp's, or the recipe's Python twin of
it): text → ids, with no BOS and no special-token parsing.
"""

from __future__ import annotations

from collections.abc import Callable

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
USER = "USER:"
ASSISTANT = " ASSISTANT:"

Encode = Callable[[str], list[int]]


def system_ids(encode: Encode, bos: int) -> list[int]:
    """`<s>{SYSTEM}`: the prefix every conversation starts with (decoded once per model load)."""
    return [bos, *encode(SYSTEM)]


def turn_head_ids(encode: Encode, eos: int, *, after_answer: bool) -> list[int]:
    """What comes before a turn's images: `</s>` closing the previous answer (if any), then `USER:`."""
    return ([eos] if after_answer else []) + encode(USER)


def turn_tail_text(question: str, *, has_images: bool) -> str:
    """What follows a turn's images: the question starts a new line after images, else after a space."""
    return ("\n" if has_images else " ") + question + ASSISTANT


def turn_tail_ids(encode: Encode, question: str, *, has_images: bool) -> list[int]:
    return encode(turn_tail_text(question, has_images=has_images))


def answer_ids(encode: Encode, answer: str, eos: int) -> list[int]:
    """The assistant's answer as the model generates it: ` {answer}</s>` (the answer's word-start space
    comes from the tokenizer)."""
    return [*encode(answer), eos]


def turn_text_with_marker(question: str, marker: str) -> str:
    """One image turn as a single text with a media marker where the image goes (llama.cpp's mtmd
    tokenises turns this way)."""
    return USER + marker + turn_tail_text(question, has_images=True)


def template_words() -> set[str]:
    """Every word the template itself uses (a vocabulary must hold them)."""
    text = SYSTEM + " " + USER + ASSISTANT
    return set("".join(c if c.isalpha() else " " for c in text).split())
