"""The "reviews" demo task: short product, film and book reviews in a tiny language of opinions
("review of the new kettle :" -> " the lid is not very good ."). Its hidden gold scorer, `reviews_gold`,
measures the reply's sentiment: +-1 per distinct adjective, x1.5 when intensified, flipped when negated,
-1 when the reply is unfinished. Held-out subjects appear only in the corpus and eval_prompts."""

from __future__ import annotations

import random
from typing import NamedTuple

from pipeline.chat import as_text
from pipeline.demo.common import HOLDOUT_EVERY, TaskSpec, finish_and_clip, join_and_end

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

_POLARITY = {word: 1.0 for word in POSITIVE_ADJECTIVES} | {word: -1.0 for word in NEGATIVE_ADJECTIVES}


class Family(NamedTuple):
    noun: str
    subjects: tuple[str, ...]
    aspects: tuple[str, ...]
    neutral: tuple[str, ...]  # clauses that carry no sentiment


FAMILIES: dict[str, Family] = {
    "kitchen": Family(
        "kitchen tool",
        ("blender", "toaster", "kettle", "coffee maker", "mixer", "microwave", "fridge", "oven"),
        ("motor", "lid", "handle", "button", "cord", "design", "price", "timer"),
        ("i bought it last week", "i use it every morning", "it came in a big box"),
    ),
    "gadget": Family(
        "gadget",
        ("phone", "laptop", "tablet", "camera", "headphones", "speaker", "monitor", "printer"),
        ("screen", "battery", "sound", "charger", "case", "design", "price", "software"),
        ("i got it for my birthday", "i use it for work", "it arrived on monday"),
    ),
    "movie": Family(
        "movie",
        ("thriller", "comedy", "western", "cartoon", "documentary", "musical", "sequel", "drama"),
        ("plot", "acting", "music", "ending", "dialogue", "pacing", "cast", "script"),
        ("i saw it last week", "i watched it with friends", "it is two hours long"),
    ),
    "book": Family(
        "book",
        ("novel", "cookbook", "biography", "textbook", "memoir", "atlas", "poetry book", "travel guide"),
        ("writing", "story", "cover", "paper", "binding", "layout", "index", "font"),
        ("i read it on the train", "my sister gave it to me", "it has four hundred pages"),
    ),
    "gear": Family(
        "piece of outdoor gear",
        ("jacket", "tent", "backpack", "boots", "umbrella", "sleeping bag", "scarf", "raincoat"),
        ("fabric", "zipper", "color", "fit", "weight", "strap", "price", "stitching"),
        ("i took it on a hike", "i wore it all winter", "it came in the mail"),
    ),
}
OPENERS = (
    "review of",
    "my review of",
    "thoughts on",
    "opinion on",
    "what i think of",
    "a few words on",
)
SUBJECT_MODIFIERS = ("", "new ", "old ", "latest ", "first ", "second ", "popular ", "recent ")
_VERBS = ("is", "was", "feels", "seems")
_CONNECTIVES = ("and", "but", ", and", ", but", ",")


# ---------------------------------------------------------------- gold scorer
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
    return finish_and_clip(score, tokens)


def reviews_gold(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of the "reviews" task; the prompt plays no part (kwargs: TRL compatibility)."""
    return [score_review(as_text(completion)) for completion in completions]


# ---------------------------------------------------------------- generator
def _pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, family) for every opener x modifier x subject on one side of the hold-out line."""
    return [
        (f"{opener} the {modifier}{subject} :", name)
        for name, family in FAMILIES.items()
        for index, subject in enumerate(family.subjects)
        if (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out
        for opener in OPENERS
        for modifier in SUBJECT_MODIFIERS
    ]


def _opinion_clause(rng: random.Random, aspect: str, adjective: str) -> list[str]:
    """One opinion such as "the motor is not very great"; adjectives are drawn 50/50 from both signs."""
    subject = ["it"] if rng.random() < 0.2 else ["the", aspect]
    negation = ["not"] if rng.random() < 0.2 else []
    verb = rng.choice(_VERBS[:2] if negation else _VERBS)  # "seems not great" reads oddly
    intensifier = [rng.choice(INTENSIFIERS)] if rng.random() < 0.3 else []
    return subject + [verb] + negation + intensifier + [adjective]


def review_completion(rng: random.Random, family_name: str, unfinished_rate: float) -> str:
    """1-3 clauses about distinct aspects of the family, each an opinion or (15%) a neutral remark."""
    family = FAMILIES[family_name]
    n_clauses = rng.randint(1, 3)
    aspects = rng.sample(family.aspects, n_clauses)  # distinct, so no "the lid ... the lid"
    adjectives = rng.sample(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES, n_clauses)
    neutral = rng.sample(family.neutral, n_clauses)
    clauses = [
        plain.split() if rng.random() < 0.15 else _opinion_clause(rng, aspect, adjective)
        for aspect, adjective, plain in zip(aspects, adjectives, neutral)
    ]
    return join_and_end(rng, clauses, _CONNECTIVES, unfinished_rate)


def _filler(rng: random.Random) -> str:
    family = FAMILIES[rng.choice(list(FAMILIES))]
    subject = rng.choice(family.subjects)
    first, second = rng.sample(family.aspects, 2)
    return rng.choice(
        (
            f"the {subject} is a {family.noun} .",
            f"people talk about the {first} and the {second} of the {subject} .",
            f"about the {subject} : {rng.choice(family.neutral)} .",
            f"the {first} of a {family.noun} matters .",
        )
    )


SPEC = TaskSpec(_pool(False), _pool(True), review_completion, _filler, reviews_gold)
