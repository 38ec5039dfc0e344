"""Programmatic reward functions with TRL's signature: the "arithmetic", "copy" and "sort" demo tasks'
verifiable rewards (also their gold scorers), a format check, and two generic shaping terms. Name one in a
config as `reward_models.rules:NAME`."""

from __future__ import annotations

import re

from reward_models.text import as_text

_EQUATION = re.compile(r"(-?\d+)\s*([+-])\s*(-?\d+)\s*=")  # "7 + 5 =" anywhere in the prompt
_INTEGER = re.compile(r"[+-]?\d+")
_ANSWER_FORMAT = re.compile(r" a : -?\d+ \.")  # exactly what the demo data's answers look like


def true_result(prompt: str) -> int:
    """The value of the first `x + y =` or `x - y =` in the prompt; a prompt without one is an error,
    since scoring it 0.0 would hide a reward function pointed at the wrong task."""
    match = _EQUATION.search(prompt)
    if match is None:
        raise ValueError(f"no equation like 'q : 7 + 5 = ?' in prompt {prompt!r}")
    left, operator, right = int(match[1]), match[2], int(match[3])
    return left + right if operator == "+" else left - right


def parse_answer(completion: str) -> int | None:
    """The first whitespace-separated token that is an integer (" a : 12 ." -> 12), else None.
    Like the gold scorers, tokens are whitespace-separated: "12." is not the number 12."""
    for token in completion.split():
        if _INTEGER.fullmatch(token):
            return int(token)
    return None


def arithmetic_exact(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Rewards a correct answer: 1.0 if the completion's first integer equals the value of the prompt's
    equation, else 0.0 (also when the completion has no integer). The format plays no part; see
    `arithmetic_format`. The verifiable reward and gold scorer of the "arithmetic" demo task."""
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        expected = true_result(as_text(prompt))
        scores.append(1.0 if parse_answer(as_text(completion)) == expected else 0.0)
    return scores


def arithmetic_format(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Rewards the answer format: 1.0 if the completion is exactly " a : <int> ." (leading space, one
    space between tokens, nothing after the full stop), else 0.0. Whether the number is right plays
    no part."""
    return [1.0 if _ANSWER_FORMAT.fullmatch(as_text(c)) else 0.0 for c in completions]


def length_penalty(
    prompts: list[str], completions: list[str], target_words: int = 12, **kwargs
) -> list[float]:
    """Penalises rambling: -max(0, words - target_words) / target_words, where words are whitespace-
    separated tokens (punctuation included). 0.0 up to the target, -1.0 at twice the target."""
    if target_words < 1:
        raise ValueError(f"target_words must be at least 1, got {target_words}")
    return [-max(0, len(as_text(c).split()) - target_words) / target_words for c in completions]


def ends_with_period(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Rewards a finished reply: 1.0 if the completion, stripped of surrounding whitespace, ends with
    ".", else 0.0."""
    return [1.0 if as_text(c).strip().endswith(".") else 0.0 for c in completions]


def copy_exact(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """1.0 if the completion's answer repeats the digits after "copy" in the prompt exactly, else 0.0.

    The "copy" demo task's verifiable reward and gold scorer: "q : copy 3 9 4 = ?" -> " a : 3 9 4 .".
    """
    return _digits_answered(prompts, completions, "copy", lambda digits: digits)


def sort_exact(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """1.0 if the completion's answer is the digits after "sort" in the prompt in ascending order, else 0.0.

    The "sort" demo task's verifiable reward and gold scorer: "q : sort 3 9 4 = ?" -> " a : 3 4 9 .".
    """
    return _digits_answered(prompts, completions, "sort", sorted)


def _digits_answered(prompts, completions, verb: str, expected) -> list[float]:
    scores = []
    for prompt, completion in zip(prompts, completions):
        wanted = expected(as_text(prompt).split(verb, 1)[-1].split("=", 1)[0].split())
        answer = as_text(completion).split(".", 1)[0].replace("a :", "", 1).split()
        scores.append(1.0 if answer == wanted else 0.0)
    return scores
