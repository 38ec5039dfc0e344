"""Entity-level precision, recall and F1 of BIO sequence labelling (CoNLL's conlleval rules), as an
`evaluate` metric module; a small stand-in for `seqeval`, which cannot be fetched here."""

import datasets
import evaluate

_DESCRIPTION = """
An entity is a maximal run of tags of one type X that starts with B-X, or with I-X after a tag that is not
of type X (conlleval's lenient rule), and continues with I-X. A predicted entity counts as correct only when
its type, start and end all equal those of a gold entity of the same sentence.
precision = correct / predicted entities; recall = correct / gold entities;
f1 = 2 P R / (P + R) (0 when both are 0).
accuracy = tags equal to their reference / all tags.
"""

_KWARGS = """
Args:
    predictions: list of tag sequences, e.g. [["B-PER", "I-PER", "O"]].
    references: list of gold tag sequences of the same lengths.
Returns:
    overall_precision, overall_recall, overall_f1, overall_accuracy, and for each entity type X a dict
    X: {"precision", "recall", "f1", "number"} ("number": gold entities of type X).
"""


def entities(tags):
    """Set of (type, start, end) spans, end exclusive, of one BIO tag sequence."""
    spans = []
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, tag_type = tag.partition("-")
        continues = prefix == "I" and tag_type == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = tag_type, i
    return set(spans)


def prf(correct, predicted, gold):
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class SeqevalLite(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references):
        counts = {}  # type -> [correct, predicted, gold]
        tags_right, tags_total = 0, 0
        for predicted_tags, gold_tags in zip(predictions, references):
            if len(predicted_tags) != len(gold_tags):
                raise ValueError(f"{len(predicted_tags)} predicted tags for {len(gold_tags)} gold tags.")
            tags_right += sum(p == g for p, g in zip(predicted_tags, gold_tags))
            tags_total += len(gold_tags)
            predicted, gold = entities(predicted_tags), entities(gold_tags)
            for span in predicted | gold:
                row = counts.setdefault(span[0], [0, 0, 0])
                row[0] += span in predicted and span in gold
                row[1] += span in predicted
                row[2] += span in gold
        result = {}
        for kind, (correct, n_predicted, n_gold) in sorted(counts.items()):
            precision, recall, f1 = prf(correct, n_predicted, n_gold)
            result[kind] = {"precision": precision, "recall": recall, "f1": f1, "number": n_gold}
        totals = [sum(row[i] for row in counts.values()) for i in range(3)]
        precision, recall, f1 = prf(*totals)
        result.update(
            overall_precision=precision,
            overall_recall=recall,
            overall_f1=f1,
            overall_accuracy=tags_right / tags_total if tags_total else 0.0,
        )
        return result
