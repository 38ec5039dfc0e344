"""Accuracy and macro-F1 of single-label classification, as an `evaluate` metric module."""

import datasets
import evaluate

_DESCRIPTION = """
accuracy = (number of predictions equal to their reference) / N.
macro_f1 = mean over classes c of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); the classes are `labels` when
given, else every class that occurs in the references or the predictions.
"""

_KWARGS = """
Args:
    predictions: predicted labels (strings or integers).
    references: gold labels, of the same type.
    labels: optional list of the classes to average F1 over.
Returns:
    accuracy, macro_f1: floats in [0, 1].
"""


def f1_per_class(predictions, references, labels):
    scores = {}
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        scores[label] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return scores


class AccuracyF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
                datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            ],
        )

    def _compute(self, predictions, references, labels=None):
        if not references:
            raise ValueError("accuracy_f1 needs at least one prediction.")
        if labels is None:
            labels = sorted(set(references) | set(predictions))
        per_class = f1_per_class(predictions, references, labels)
        return {
            "accuracy": sum(p == r for p, r in zip(predictions, references)) / len(references),
            "macro_f1": sum(per_class.values()) / len(per_class),
        }
