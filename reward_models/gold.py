"""Hidden "gold" scorers of the demo tasks: the true notion of "better" that learned reward models only
approximate. Same call signature as TRL GRPO reward functions. An index: each scorer lives with its task in
`pipeline/demo/` (reviews.py, support.py); name one in a config as `reward_models.gold:NAME`. The gold
scorers of "arithmetic", "copy" and "sort" are their rules, in `reward_models.rules`."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.demo.common import SCORE_LIMIT, UNFINISHED_PENALTY
from pipeline.demo.reviews import (
    INTENSIFIER_WEIGHT,
    INTENSIFIERS,
    NEGATIONS,
    NEGATIVE_ADJECTIVES,
    POSITIVE_ADJECTIVES,
    reviews_gold,
    score_review,
)
from pipeline.demo.support import SUPPORT_CUES, score_support_reply, support_gold

__all__ = [
    "GOLD_SCORERS",
    "INTENSIFIERS",
    "INTENSIFIER_WEIGHT",
    "NEGATIONS",
    "NEGATIVE_ADJECTIVES",
    "POSITIVE_ADJECTIVES",
    "SCORE_LIMIT",
    "SUPPORT_CUES",
    "UNFINISHED_PENALTY",
    "reviews_gold",
    "score_review",
    "score_support_reply",
    "support_gold",
]

GOLD_SCORERS: dict[str, Callable[..., list[float]]] = {"reviews": reviews_gold, "support": support_gold}
