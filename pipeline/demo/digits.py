"""The "copy" and "sort" demo tasks, verifiable rewards that tiny models learn: "q : copy 3 9 4 = ?" ->
" a : 3 9 4 ." and "q : sort 3 9 4 = ?" -> " a : 3 4 9 .". Their rules and gold scorers, `copy_exact` and
`sort_exact`, are 1.0 when the answer holds exactly the expected digits, else 0.0. Both tasks share one
set of digit strings and one split of it: held-out strings appear only in eval_prompts.

Held-out digit strings test the rule itself (the answer's i-th digit is the one a fixed distance back, or
the i-th smallest), which a 2-layer model learns, unlike held-out sums, which need arithmetic it cannot
learn from a lookup table. Strings of one length keep that distance fixed: with lengths 3 to 5 mixed, the
2-layer, 64-wide demo model answered 0% of held-out strings after SFT, with length 3 alone about 15%."""

from __future__ import annotations

import itertools
import random
import zlib

from pipeline.chat import as_text
from pipeline.demo.arithmetic import ARITHMETIC_CORRECT_RATE, ARITHMETIC_FLAW_RATE
from pipeline.demo.common import HOLDOUT_EVERY, TaskSpec

_COPY_LENGTH = 3


# ---------------------------------------------------------------- rules
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


# ---------------------------------------------------------------- generator
def _string_held_out(digits: str) -> bool:
    return zlib.crc32(digits.encode()) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _pool(verb: str, held_out: bool) -> list[tuple[str, str]]:
    """(prompt, digits) for every _COPY_LENGTH-digit string, split by a checksum into train and held-out."""
    return [
        (f"q : {verb} {digits} = ?", digits)
        for digits in (" ".join(t) for t in itertools.product("0123456789", repeat=_COPY_LENGTH))
        if _string_held_out(digits) == held_out
    ]


def _answer(rng: random.Random, tokens: list[str], flaw_rate: float) -> str:
    """ " a : <tokens> ." right ARITHMETIC_CORRECT_RATE of the time, else one digit changed, dropped or
    swapped; with flaw_rate, cut before " ." instead."""
    tokens = list(tokens)
    if rng.random() >= ARITHMETIC_CORRECT_RATE:
        i = rng.randrange(len(tokens))
        mistake = rng.choice(("change", "drop", "swap"))
        if mistake == "change":
            tokens[i] = str((int(tokens[i]) + rng.randint(1, 9)) % 10)
        elif mistake == "drop":
            del tokens[i]
        else:
            j = (i + 1) % len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
    answer = " a : " + " ".join(tokens)
    return answer if rng.random() < flaw_rate else answer + " ."


def _random_string(rng: random.Random) -> str:
    """A training digit string: held-out strings appear in eval_prompts only."""
    digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    while _string_held_out(digits):
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    return digits


def _copy_completion(rng: random.Random, digits: str, flaw_rate: float) -> str:
    return _answer(rng, digits.split(), flaw_rate)


def _copy_filler(rng: random.Random) -> str:
    digits = _random_string(rng)
    return f"the digits {digits} again : {digits} ."


def _sort_completion(rng: random.Random, digits: str, flaw_rate: float) -> str:
    """The sorted digits, with copy's mistakes and flaws (so SFT is right about half the time)."""
    return _answer(rng, sorted(digits.split()), flaw_rate)


def _sort_filler(rng: random.Random) -> str:
    digits = _random_string(rng)
    return f"the digits {digits} in order : {' '.join(sorted(digits.split()))} ."


COPY_SPEC = TaskSpec(
    _pool("copy", False),
    _pool("copy", True),
    _copy_completion,
    _copy_filler,
    copy_exact,
    flaw_rate=ARITHMETIC_FLAW_RATE,
    corpus_sees_held_out=False,
)
SORT_SPEC = TaskSpec(
    _pool("sort", False),
    _pool("sort", True),
    _sort_completion,
    _sort_filler,
    sort_exact,
    flaw_rate=ARITHMETIC_FLAW_RATE,
    corpus_sees_held_out=False,
)
