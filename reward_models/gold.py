"""Hidden "gold" scorers of the demo tasks: the true notion of "better" that learned reward models only
approximate. Same call signature as TRL GRPO reward functions."""

from __future__ import annotations

from collections.abc import Callable

from reward_models.text import as_text

POSITIVE_ADJECTIVES: tuple[str, ...] = (
    "great", "good", "excellent", "amazing", "wonderful", "lovely",
    "fantastic", "solid", "perfect", "nice", "superb", "brilliant",
)  # fmt: skip
NEGATIVE_ADJECTIVES: tuple[str, ...] = (
    "awful", "bad", "terrible", "poor", "horrible", "weak",
    "cheap", "boring", "flimsy", "useless", "dreadful", "mediocre",
)  # fmt: skip
INTENSIFIERS: tuple[str, ...] = ("very", "really")
NEGATIONS: tuple[str, ...] = ("not",)
INTENSIFIER_WEIGHT = 1.5
UNFINISHED_PENALTY = -1.0
SCORE_LIMIT = 5.0  # many distinct adjectives or actions could push a score far out; clip to [-5, 5]

_POLARITY = {word: 1.0 for word in POSITIVE_ADJECTIVES} | {word: -1.0 for word in NEGATIVE_ADJECTIVES}

# support cues: token sequence -> (canonical cue, weight); each canonical cue counts once per reply,
# so "sorry ... sorry" or "refund ... refund" earns no more than saying it once.
SUPPORT_CUES: dict[tuple[str, ...], tuple[str, float]] = {
    ("sorry",): ("apology", 1.0),
    ("apologize",): ("apology", 1.0),
    ("refund",): ("refund", 1.5),
    ("replace",): ("replace", 1.5),
    ("replacement",): ("replace", 1.5),
    ("track",): ("track", 1.5),
    ("escalate",): ("escalate", 1.5),
    ("thanks",): ("thanks", 0.5),
    ("thank",): ("thanks", 0.5),
    ("not", "my", "problem"): ("not my problem", -1.5),
    ("read", "the", "manual"): ("read the manual", -1.5),
    ("wait",): ("wait", -1.5),
    ("your", "fault"): ("your fault", -1.5),
    ("call", "someone", "else"): ("call someone else", -1.5),
    ("can", "not", "help"): ("can not help", -1.5),
}


def _finish_and_clip(score: float, tokens: list[str]) -> float:
    if not tokens or tokens[-1] != ".":  # a reply cut off before its final " ." is unfinished
        score += UNFINISHED_PENALTY
    return max(-SCORE_LIMIT, min(SCORE_LIMIT, score))


def score_review(completion: str) -> float:
    """Sentiment of one review: +-1 per distinct adjective, x1.5 if intensified, sign flipped if negated.

    Modifiers are the run of "very"/"really"/"not" right before the adjective; an odd number of "not"
    flips. Only the first occurrence of an adjective counts, so repeating "great" earns nothing more.
    """
    tokens = completion.split()
    seen: set[str] = set()
    score = 0.0
    for i, token in enumerate(tokens):
        polarity = _POLARITY.get(token)
        if polarity is None or token in seen:
            continue
        seen.add(token)
        weight, j = 1.0, i - 1
        while j >= 0 and tokens[j] in INTENSIFIERS + NEGATIONS:
            if tokens[j] in NEGATIONS:
                polarity = -polarity
            else:
                weight = INTENSIFIER_WEIGHT
            j -= 1
        score += polarity * weight
    return _finish_and_clip(score, tokens)


def score_support_reply(completion: str) -> float:
    """Politeness + helpfulness of one agent reply: apology +1, each distinct concrete action
    (refund, replace, track, escalate) +1.5, thanks +0.5, each distinct rude phrase -1.5."""
    tokens = completion.split()
    found: dict[str, float] = {}
    for i in range(len(tokens)):
        for cue, (name, weight) in SUPPORT_CUES.items():
            if tuple(tokens[i : i + len(cue)]) == cue:
                found[name] = weight
    return _finish_and_clip(sum(found.values()), tokens)


def reviews_gold(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of the "reviews" task; the prompt plays no part (kwargs: TRL compatibility)."""
    return [score_review(as_text(completion)) for completion in completions]


def support_gold(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of the "support" task; the prompt plays no part (kwargs: TRL compatibility)."""
    return [score_support_reply(as_text(completion)) for completion in completions]


GOLD_SCORERS: dict[str, Callable[..., list[float]]] = {"reviews": reviews_gold, "support": support_gold}
