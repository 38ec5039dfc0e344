"""How varied a policy's samples are: distinct-n (Li et al., 2016) and the share of unique completions.

Text is split on whitespace, not by a model's tokenizer, so policies with different tokenizers compare.
"""

from __future__ import annotations

from collections.abc import Sequence


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of one word sequence, in order; none when it has fewer than n words."""
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """distinct-n = |unique n-grams| / |n-grams| over all texts together; 0.0 when there are none.

    1.0 means no n-gram repeats anywhere in the samples; a policy that says the same thing to every
    prompt drifts towards 0. N-grams never span two texts.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [gram for text in texts for gram in ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def unique_fraction(texts: Sequence[str]) -> float:
    """Distinct strings / strings (1.0: all different; 1/len: one string repeated); 0.0 for none."""
    return len(set(texts)) / len(texts) if texts else 0.0
