"""The project's metric modules, loaded offline through `evaluate.load(local path)`, against values worked
by hand."""

from __future__ import annotations

import math

import pytest

from stages import task_metrics as metrics


@pytest.fixture(scope="module")
def accuracy_f1():
    return metrics.load("accuracy_f1")


@pytest.fixture(scope="module")
def seqeval_lite():
    return metrics.load("seqeval_lite")


@pytest.fixture(scope="module")
def bleu_chrf():
    return metrics.load("bleu_chrf")


def test_metrics_load_through_evaluate_from_the_package_folder():
    import evaluate

    module = evaluate.load(str(metrics.METRICS_DIR / "accuracy_f1"))
    assert isinstance(module, evaluate.EvaluationModule)
    with pytest.raises(ValueError, match="accuracy_f1, seqeval_lite, bleu_chrf"):
        metrics.load("accuracy")


# ---------------------------------------------------------------- accuracy and macro-F1
def test_accuracy_and_macro_f1_by_hand(accuracy_f1):
    # pos: TP 2, FP 1, FN 0 -> F1 2*2/(4+1) = 4/5; neg: TP 1, FP 1, FN 1 -> 2/4; neu: TP 0, FN 1 -> 0
    result = accuracy_f1.compute(
        predictions=["pos", "pos", "neg", "pos", "neg"],
        references=["pos", "pos", "neg", "neg", "neu"],
    )
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 0) / 3)


def test_integer_labels_and_an_explicit_label_set(accuracy_f1):
    result = accuracy_f1.compute(predictions=[1, 1, 1], references=[1, 0, 1], labels=[0, 1, 2])
    # class 1: TP 2, FP 1 -> 4/5; class 0: FN 1 -> 0; class 2: absent everywhere -> 0
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx(0.8 / 3)


# ---------------------------------------------------------------- entity-level F1
def test_entity_f1_by_hand(seqeval_lite):
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
    predictions = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "I-ORG", "O"]]
    # gold: PER(0,2) LOC(3,4) ORG(1,4); predicted: PER(0,2) ORG(1,3): 1 correct (the ORG end differs)
    result = seqeval_lite.compute(predictions=predictions, references=references)
    assert result["overall_precision"] == pytest.approx(1 / 2)
    assert result["overall_recall"] == pytest.approx(1 / 3)
    assert result["overall_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert result["overall_accuracy"] == pytest.approx(6 / 8)
    assert result["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert result["LOC"]["number"] == 1 and result["LOC"]["f1"] == 0.0


def test_conlleval_rules_for_stray_inside_tags(seqeval_lite):
    # I-X after O starts an entity; I-Y after I-X starts a new one; B-X after I-X starts a new one
    result = seqeval_lite.compute(
        predictions=[["O", "I-A", "I-A", "I-B", "B-B", "I-B"]],
        references=[["O", "B-A", "I-A", "B-B", "B-B", "I-B"]],
    )
    assert result["overall_f1"] == 1.0


def test_all_o_predictions_score_zero_f1(seqeval_lite):
    result = seqeval_lite.compute(predictions=[["O", "O", "O"]], references=[["B-X", "O", "O"]])
    assert result["overall_f1"] == 0.0 and result["overall_accuracy"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- BLEU and chrF
def test_bleu_by_hand(bleu_chrf):
    # clipped matches: 1-grams 5/6 ("the" twice in the hypothesis, once in the reference), 2-grams 3/5,
    # 3-grams 2/4, 4-grams 1/3; equal lengths, so no brevity penalty
    result = bleu_chrf.compute(predictions=["the cat sat on the mat"], references=["the cat sat on a mat"])
    assert result["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)


def test_bleu_brevity_penalty_and_zero_precision(bleu_chrf):
    # hypothesis of 4 tokens, reference of 6: every n-gram matches, BP = exp(1 - 6/4)
    result = bleu_chrf.compute(predictions=["the cat sat on"], references=["the cat sat on a mat"])
    assert result["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4))
    no_four_gram = bleu_chrf.compute(predictions=["a b c"], references=["a b c"])
    assert no_four_gram["bleu"] == 0.0  # no 4-grams at all: p_4 = 0, and there is no smoothing


def test_chrf_by_hand(bleu_chrf):
    # "ab" vs "abc": 1-grams P 2/2 R 2/3; 2-grams P 1/1 R 1/2; 3-grams only in the reference (not counted).
    # P = 1, R = (2/3 + 1/2) / 2 = 7/12; chrF2 = 5 P R / (4 P + R) = (35/12) / (55/12) = 7/11
    assert bleu_chrf.compute(predictions=["ab"], references=["abc"])["chrf"] == pytest.approx(700 / 11)
    # white space is ignored: "a b" is the character sequence "ab"
    assert bleu_chrf.compute(predictions=["a b"], references=["ab"])["chrf"] == pytest.approx(100.0)


def test_corpus_statistics_are_summed_before_dividing(bleu_chrf):
    # one perfect 6-token sentence and one 3-token sentence with no matches: 1-grams 6/9, 2-grams 5/7, ...
    result = bleu_chrf.compute(predictions=["a b c d e f", "x y z"], references=["a b c d e f", "p q r"])
    assert result["bleu"] == pytest.approx(100 * (6 / 9 * 5 / 7 * 4 / 5 * 3 / 3) ** 0.25)
