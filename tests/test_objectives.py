"""The pretraining objectives' data math: BERT masking (statistically), next-sentence pairs, T5 span
corruption (by hand), and the pretrain stage's mlm / seq2seq paths on tiny models."""

from __future__ import annotations

import json
import random

import pytest
import torch

from pipeline.config_schema import InvalidValue
from stages.objectives import (
    IGNORE,
    MaskingConfig,
    apply_mlm_masking,
    choose_mlm_positions,
    corrupt_spans,
    distinct_word_ids,
    next_sentence_pairs,
    noise_counts,
    random_spans_noise_mask,
    span_corruption,
    split_sentences,
)

MASK_ID, VOCAB = 3, 500


def batch_with_specials(rows: int = 64, width: int = 256, seed: int = 0):
    """Random ids in [10, VOCAB) with [CLS] (1) first, [SEP] (2) last and 20 padding (0) positions per row."""
    ids = torch.randint(10, VOCAB, (rows, width), generator=torch.Generator().manual_seed(seed))
    special = torch.zeros_like(ids)
    ids[:, 0], ids[:, -21], ids[:, -20:] = 1, 2, 0
    special[:, 0], special[:, -21:] = 1, 1
    return ids, special


# ---------------------------------------------------------------- masked LM
def test_mlm_masking_proportions_over_many_tokens():
    """15% of the 13,696 eligible tokens chosen (±1 point: 3.5 standard errors); of the ~2,050 chosen, 80%
    [MASK], 10% random, 10% kept (±3 points: 3.5 standard errors for the 80%, 4.5 for the 10%s)."""
    ids, special = batch_with_specials()
    masked, labels = apply_mlm_masking(
        ids, special, MASK_ID, VOCAB, MaskingConfig(), torch.Generator().manual_seed(1)
    )
    chosen = labels != IGNORE
    assert abs(chosen.sum().item() / (special == 0).sum().item() - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (chosen & (masked == MASK_ID)).sum().item() / n
    kept = (chosen & (masked == ids)).sum().item() / n  # includes the 1-in-500 random draws of the same id
    random_ = (chosen & (masked != MASK_ID) & (masked != ids)).sum().item() / n
    assert abs(as_mask - 0.8) < 0.03 and abs(random_ - 0.1) < 0.03 and abs(kept - 0.1) < 0.03
    assert torch.equal(labels[chosen], ids[chosen])  # the label is the original token
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes


def test_special_tokens_are_never_chosen():
    ids, special = batch_with_specials(rows=32, width=64)
    for seed in range(20):  # probability 0.9 would choose ~90% of every row if specials counted
        chosen = choose_mlm_positions(special, 0.9, torch.Generator().manual_seed(seed))
        assert not (chosen & (special == 1)).any()
        assert chosen.any()


def test_masking_rates_come_from_the_config():
    ids, special = batch_with_specials(rows=8, width=64)
    rates = MaskingConfig(probability=1.0, mask_rate=0.0, random_rate=0.0)  # choose all, change none
    masked, labels = apply_mlm_masking(ids, special, MASK_ID, VOCAB, rates, torch.Generator().manual_seed(0))
    assert torch.equal(masked, ids)
    assert torch.equal(labels == IGNORE, special == 1)
    all_masked, _ = apply_mlm_masking(
        ids, special, MASK_ID, VOCAB, MaskingConfig(1.0, 1.0, 0.0), torch.Generator().manual_seed(0)
    )
    assert torch.equal(all_masked == MASK_ID, special == 0)


def test_whole_word_masking_chooses_every_token_of_a_word():
    word_ids = torch.tensor([[-1] + [w for w in range(60) for _ in range(3)] + [-1]] * 40)  # 3 tokens a word
    special = (word_ids < 0).long()
    chosen = choose_mlm_positions(special, 0.15, torch.Generator().manual_seed(0), word_ids)
    per_word = chosen[:, 1:-1].reshape(40, 60, 3)
    assert torch.equal(per_word.all(-1), per_word.any(-1))  # a word is chosen whole or not at all
    assert abs(per_word.all(-1).float().mean().item() - 0.15) < 0.03  # 2,400 words: 3.5 standard errors
    assert not chosen[:, [0, -1]].any()


def test_distinct_word_ids_count_across_both_segments():
    assert distinct_word_ids([None, 0, 0, 1, None, 0, 1, 1, None], [None, 0, 0, 0, None, 1, 1, 1, None]) == [
        -1, 0, 0, 1, -1, 2, 3, 3, -1,
    ]  # fmt: skip


def test_masking_config_refuses_impossible_rates():
    with pytest.raises(InvalidValue, match="random_rate"):
        MaskingConfig(mask_rate=0.95, random_rate=0.1)
    with pytest.raises(InvalidValue, match="probability"):
        MaskingConfig(probability=1.5)


# ---------------------------------------------------------------- next-sentence prediction
def test_split_sentences_cuts_after_end_marks():
    assert split_sentences("review of the lid : it is good . it broke !") == [
        "review of the lid :",
        "it is good .",
        "it broke !",
    ]


def test_next_sentence_pairs_keep_document_order_or_take_another_document():
    documents = [[f"d{d} s{s}" for s in range(3)] for d in range(50)]
    pairs = next_sentence_pairs(documents, random.Random(0))
    assert len(pairs) == 100  # two adjacent pairs per document
    for first, second, label in pairs:
        doc, sentence = first.split()
        if label == 0:
            assert second == f"{doc} s{int(sentence[1:]) + 1}"
        else:
            assert second.split()[0] != doc
    assert 35 <= sum(label for _, _, label in pairs) <= 65  # half random: 3 standard errors of 50
    lone = next_sentence_pairs([["a .", "b ."], []], random.Random(0))  # no other document to draw from
    assert lone == [("a .", "b .", 0)]


# ---------------------------------------------------------------- span corruption
def test_corrupt_spans_by_hand_the_t5_paper_example():
    """Raffel et al. (2020), figure 2: "Thank you <X> me to your party <Y> week ." / "<X> for inviting <Y>
    last <Z>"."""
    words = "Thank you for inviting me to your party last week .".split()
    vocab = {w: i for i, w in enumerate(words)} | {"<X>": 100, "<Y>": 101, "<Z>": 102}

    def ids(text: str) -> list[int]:
        return [vocab[w] for w in text.split()]

    noise = [w in ("for", "inviting", "last") for w in words]
    inputs, targets = corrupt_spans(ids(" ".join(words)), noise, ids("<X> <Y> <Z>"))
    assert inputs == ids("Thank you <X> me to your party <Y> week .")
    assert targets == ids("<X> for inviting <Y> last <Z>")


def test_corrupt_spans_needs_a_sentinel_per_span_and_one_more():
    with pytest.raises(ValueError, match="3 sentinels needed"):
        corrupt_spans([5, 6, 7, 8], [True, False, True, False], [100, 101])


def test_noise_counts_by_hand():
    assert noise_counts(64, 0.15, 3.0) == (10, 3)  # round(9.6) = 10 noise tokens, round(10 / 3) = 3 spans
    assert noise_counts(10, 0.15, 3.0) == (2, 1)
    assert noise_counts(2, 0.01, 3.0) == (1, 1)  # at least one noise token and one span


@pytest.mark.parametrize("length", [2, 7, 64, 500])
def test_random_spans_noise_mask_has_the_stated_counts(length):
    rng = random.Random(length)
    for _ in range(20):
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        n_noise, n_spans = noise_counts(length, 0.15, 3.0)
        starts = sum(m and (i == 0 or not mask[i - 1]) for i, m in enumerate(mask))
        assert len(mask) == length and sum(mask) == n_noise and starts == n_spans and not mask[0]


def test_span_corruption_round_trips():
    """Putting each span back in place of its sentinel gives the original tokens."""
    tokens = list(range(10, 74))
    sentinels = [1000 + i for i in range(10)]
    inputs, targets = span_corruption(tokens, 0.15, 3.0, sentinels, random.Random(0))
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    restored = [t for token in inputs for t in (spans[token] if token in spans else [token])]
    assert restored == tokens
    assert sum(len(s) for s in spans.values()) == 10 and len(spans) == 3 + 1  # 3 spans + the final sentinel


# ---------------------------------------------------------------- the pretrain stage's other objectives
def tiny_pretrain(tmp_path, **stage) -> dict:
    """Run one pretrain stage on a 400-document corpus; returns its metrics."""
    import yaml

    from pipeline import demo
    from pipeline.cli import main

    corpus = tmp_path / "corpus.jsonl"
    rows = demo.generate_split("reviews", "corpus")[:400]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    block = {"kind": "pretrain", "data": str(corpus), "eval_fraction": 0.1, "max_steps": 40, "batch_size": 32,
             "lr": 3e-3, "log_every": 100}  # fmt: skip
    block["model"] = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                      "vocab_size": 300, **stage.pop("model")}  # fmt: skip
    config = {"name": "t", "threads": 1, "stages": {"pretrain": block | stage}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    return json.loads((tmp_path / "run" / "pretrain" / "rlhf_stage.json").read_text())["metrics"]


def test_mlm_with_next_sentence_prediction_learns(tmp_path):
    from transformers import AutoTokenizer, BertForPreTraining

    m = tiny_pretrain(
        tmp_path, objective="mlm", nsp=True, masking={"whole_word": True}, model={"family": "bert"}
    )
    assert m["eval_loss"] < m["eval_loss_before"] - 1.0
    assert m["eval_masked_accuracy"] > m["eval_masked_accuracy_before"] + 0.05
    assert 0.0 <= m["eval_nsp_accuracy"] <= 1.0
    model = BertForPreTraining.from_pretrained(tmp_path / "run" / "pretrain")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "pretrain")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.mask_token == "[MASK]"


def test_seq2seq_span_corruption_learns(tmp_path):
    from transformers import T5ForConditionalGeneration

    m = tiny_pretrain(tmp_path, objective="seq2seq", model={"family": "t5"})
    assert m["eval_loss"] < m["eval_loss_before"] - 1.0
    assert T5ForConditionalGeneration.from_pretrained(tmp_path / "run" / "pretrain").config.num_layers == 2


def test_objective_and_family_must_match():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    data = {"stages": {"pretrain": {"data": "x.jsonl", "objective": "mlm"}}}
    with pytest.raises(
        ConfigError, match="is 'mlm', which trains a model of family bert.*set model.family: bert"
    ):
        load_config(None, data=data)
