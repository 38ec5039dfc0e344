"""Corpus BLEU and chrF of generated text against one reference each, as an `evaluate` metric module."""

import math
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """
BLEU (Papineni et al. 2002), corpus level, on white-space tokens: p_n = clipped n-gram matches / hypothesis
n-grams, summed over the corpus, for n = 1..4; BP = min(1, exp(1 - r / c)) with r and c the reference and
hypothesis token counts; BLEU = 100 BP exp(mean_n log p_n), and 0 when some p_n is 0 (no smoothing).

chrF (Popovic 2015) as sacrebleu computes it: character n-grams of the text without white space, n = 1..6,
counts summed over the corpus; P and R are the means of the per-order precisions and recalls over the orders
where both hypothesis and reference have n-grams; chrF = 100 (1 + b^2) P R / (b^2 P + R), b = 2.
"""

_KWARGS = """
Args:
    predictions: generated strings.
    references: one reference string per prediction.
Returns:
    bleu, chrf: floats in [0, 100].
"""


def ngrams(items, n):
    return Counter(tuple(items[i : i + n]) for i in range(len(items) - n + 1))


def corpus_bleu(predictions, references, max_order=4):
    matches, totals = [0] * max_order, [0] * max_order
    hypothesis_length, reference_length = 0, 0
    for prediction, reference in zip(predictions, references):
        hypothesis, gold = prediction.split(), reference.split()
        hypothesis_length += len(hypothesis)
        reference_length += len(gold)
        for n in range(1, max_order + 1):
            predicted, expected = ngrams(hypothesis, n), ngrams(gold, n)
            matches[n - 1] += sum((predicted & expected).values())
            totals[n - 1] += sum(predicted.values())
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = min(1.0, math.exp(1 - reference_length / hypothesis_length))
    return 100 * brevity * math.exp(log_precision)


def corpus_chrf(predictions, references, max_order=6, beta=2.0):
    stats = [[0, 0, 0] for _ in range(max_order)]  # per order: matches, hypothesis n-grams, reference n-grams
    for prediction, reference in zip(predictions, references):
        hypothesis, gold = "".join(prediction.split()), "".join(reference.split())
        for n in range(1, max_order + 1):
            predicted, expected = ngrams(hypothesis, n), ngrams(gold, n)
            stats[n - 1][0] += sum((predicted & expected).values())
            stats[n - 1][1] += sum(predicted.values())
            stats[n - 1][2] += sum(expected.values())
    effective = [(m / h, m / r) for m, h, r in stats if h and r]
    if not effective:
        return 0.0
    precision = sum(p for p, _ in effective) / len(effective)
    recall = sum(r for _, r in effective) / len(effective)
    if precision + recall == 0:
        return 0.0
    return 100 * (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


class BleuChrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        return {"bleu": corpus_bleu(predictions, references), "chrf": corpus_chrf(predictions, references)}
