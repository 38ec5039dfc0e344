"""The "arithmetic" demo task, a verifiable reward: "q : 7 + 5 = ?" -> " a : 12 .", sums and differences
of 0..99 with results in 0..99. Its rule and gold scorer, `arithmetic_exact`, is 1.0 when the reply's
first integer is the right result, else 0.0; `arithmetic_format` checks the answer's form alone. Held-out
operand pairs appear only in eval_prompts (not in the corpus, which would hold their answers)."""

from __future__ import annotations

import random
import re
import zlib

from pipeline.chat import as_text
from pipeline.demo.common import HOLDOUT_EVERY, TaskSpec

ARITHMETIC_CORRECT_RATE = 0.47  # share of demo answers with the right number: SFT stays far below 100%
ARITHMETIC_FLAW_RATE = 0.2  # share of SFT / prefs answers in a wrong format (cut, unlabelled, rambling)
_MAX_NUMBER = 99  # operands and results are 0..99: one or two digits, never negative
_ANSWER_OFFSETS = (-10, -2, -1, 1, 2, 10)  # the wrong answers: off by one, two, or a carry

_EQUATION = re.compile(r"(-?\d+)\s*([+-])\s*(-?\d+)\s*=")  # "7 + 5 =" anywhere in the prompt
_INTEGER = re.compile(r"[+-]?\d+")
_ANSWER_FORMAT = re.compile(r" a : -?\d+ \.")  # exactly what the demo data's answers look like


# ---------------------------------------------------------------- rules
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


# ---------------------------------------------------------------- generator
def _operand_pair_held_out(left: int, right: int) -> bool:
    """About 1 in HOLDOUT_EVERY unordered operand pairs, in both orders and under both operations.
    A checksum, not `(left + right) % 4`, so the held-out pairs are not all of one result class."""
    low, high = sorted((left, right))
    return zlib.crc32(f"{low} {high}".encode()) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, true result) for every x + y and x - y with result in 0..99, on one side of the line."""
    return [
        (f"q : {left} {operator} {right} = ?", str(left + right if operator == "+" else left - right))
        for left in range(_MAX_NUMBER + 1)
        for right in range(_MAX_NUMBER + 1)
        if _operand_pair_held_out(left, right) == held_out
        for operator in ("+", "-")
        if (left + right <= _MAX_NUMBER if operator == "+" else left >= right)
    ]


def _completion(rng: random.Random, result: str, flaw_rate: float) -> str:
    """An answer " a : N ." with the right N ARITHMETIC_CORRECT_RATE of the time, else N off by a little;
    with flaw_rate, a wrong format instead: cut before " .", no "a :", rambling on, or no number at all."""
    answer = int(result)
    if rng.random() >= ARITHMETIC_CORRECT_RATE:
        offset = rng.choice(_ANSWER_OFFSETS)
        answer += offset if 0 <= answer + offset <= _MAX_NUMBER else -offset  # stay in 0..99
    if rng.random() >= flaw_rate:
        return f" a : {answer} ."
    left, right = rng.randint(0, 50), rng.randint(0, 49)
    while _operand_pair_held_out(left, right):  # rambling must not leak a held-out pair into training
        left, right = rng.randint(0, 50), rng.randint(0, 49)
    return rng.choice(
        (
            f" a : {answer}",  # unfinished
            f" {answer} .",  # unlabelled
            f" a : {answer} . q : {left} + {right} = ? a : {left + right} .",  # rambles on
            " a : ? .",  # no number: never correct
        )
    )


def _filler(rng: random.Random) -> str:
    """True sentences about numbers that teach their order, not the sums."""
    n = rng.randint(1, _MAX_NUMBER - 3)
    smaller = rng.randint(0, n - 1)
    return rng.choice(
        (
            f"after {n} comes {n + 1} .",
            f"before {n} comes {n - 1} .",
            f"{n} is more than {smaller} .",
            f"count : {n} {n + 1} {n + 2} {n + 3} .",
        )
    )


SPEC = TaskSpec(
    _pool(False),
    _pool(True),
    _completion,
    _filler,
    arithmetic_exact,
    flaw_rate=ARITHMETIC_FLAW_RATE,
    corpus_sees_held_out=False,
)
