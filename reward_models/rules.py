"""Programmatic reward functions with TRL's signature: the "arithmetic", "copy" and "sort" demo tasks'
verifiable rewards (also their gold scorers) and format check, which live with their tasks in
`pipeline/demo/` (arithmetic.py, digits.py) and are indexed here, and two generic shaping terms. Name one in
a config as `reward_models.rules:NAME`."""

from __future__ import annotations

from pipeline.chat import as_text
from pipeline.demo.arithmetic import arithmetic_exact, arithmetic_format, parse_answer, true_result
from pipeline.demo.digits import copy_exact, sort_exact

__all__ = [
    "arithmetic_exact",
    "arithmetic_format",
    "copy_exact",
    "ends_with_period",
    "length_penalty",
    "parse_answer",
    "sort_exact",
    "true_result",
]


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
