"""Supervised demo tasks for the `task` stage, in the reviews language, with splits train / test (no test
row repeats a train row): "sentiment" ({"text","label"}: the sign of the reviews gold score), "ner"
({"tokens","tags"}: BIO product and aspect spans) and "summary" ({"source","target"}: a review -> its
aspects and their polarity). No gold scorer: the labels are the truth the stage is measured against."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import NamedTuple

from pipeline.demo.reviews import (
    FAMILIES,
    NEGATIONS,
    NEGATIVE_ADJECTIVES,
    OPENERS,
    POSITIVE_ADJECTIVES,
    SUBJECT_MODIFIERS,
    review_completion,
    reviews_gold,
)

SUPERVISED_TASKS: tuple[str, ...] = ("sentiment", "ner", "summary")
SUPERVISED_SPLITS: tuple[str, ...] = ("train", "test")
SUPERVISED_SIZES: dict[str, int] = {"train": 2000, "test": 400}


class TaggedReview(NamedTuple):
    tokens: list[str]
    tags: list[str]  # BIO: B-PRODUCT / I-PRODUCT on the subject, B-ASPECT on an aspect, O elsewhere
    opinions: list[tuple[str, str]]  # (aspect or "it", "good" | "bad") per opinion, in order


def tagged_review(rng: random.Random) -> TaggedReview:
    """A finished review of the reviews language, word-tagged, with the polarity of each opinion."""
    name = rng.choice(list(FAMILIES))
    family = FAMILIES[name]
    subject = rng.choice(family.subjects).split()
    head = f"{rng.choice(OPENERS)} the {rng.choice(SUBJECT_MODIFIERS)}".split()
    body = review_completion(rng, name, 0.0).split()
    tags = ["O"] * len(head) + ["B-PRODUCT"] + ["I-PRODUCT"] * (len(subject) - 1) + ["O"]
    opinions: list[tuple[str, str]] = []
    target, negated = "it", False
    for i, token in enumerate(body):
        is_aspect = token in family.aspects and i > 0 and body[i - 1] == "the"
        tags.append("B-ASPECT" if is_aspect else "O")
        if is_aspect or token == "it":
            target, negated = token, False
        elif token in NEGATIONS:
            negated = not negated
        elif token in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES:
            good = (token in POSITIVE_ADJECTIVES) != negated
            opinions.append((target, "good" if good else "bad"))
    return TaggedReview([*head, *subject, ":", *body], tags, opinions)


def sentiment_row(rng: random.Random) -> dict:
    """{"text", "label"}: the gold scorer's sign of the review (negation and intensifiers included)."""
    review = tagged_review(rng)
    colon = review.tokens.index(":")
    score = reviews_gold([""], [" " + " ".join(review.tokens[colon + 1 :])])[0]
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return {"text": " ".join(review.tokens), "label": label}


def ner_row(rng: random.Random) -> dict:
    review = tagged_review(rng)
    return {"tokens": review.tokens, "tags": review.tags}


def summary_row(rng: random.Random) -> dict:
    """{"source": review, "target": "<subject> : <aspect> good|bad , ..."} ("no opinion" when none)."""
    review = tagged_review(rng)
    subject = [t for t, tag in zip(review.tokens, review.tags) if tag.endswith("PRODUCT")]
    opinions = " , ".join(f"{aspect} {polarity}" for aspect, polarity in review.opinions) or "no opinion"
    return {"source": " ".join(review.tokens), "target": f"{' '.join(subject)} : {opinions}"}


_ROWS: dict[str, Callable[[random.Random], dict]] = {
    "sentiment": sentiment_row,
    "ner": ner_row,
    "summary": summary_row,
}


def supervised_split(task: str, split: str, seed: int) -> list[dict]:
    """Rows drawn from the task's own RNG stream; the test split skips any row the train split holds."""
    seen = set()
    if split == "test":
        seen = {json.dumps(row) for row in supervised_split(task, "train", seed)}
    rng = random.Random(f"{task}/{split}/{seed}")
    rows: list[dict] = []
    while len(rows) < SUPERVISED_SIZES[split]:
        row = _ROWS[task](rng)
        if json.dumps(row) not in seen:
            rows.append(row)
    return rows
