"""The `task` stage: classification, token classification and seq2seq on tiny models built from scratch, its
data formats and demo tasks, word/sub-token alignment and the trivial baselines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.data import CLASSIFICATION, SOURCE_TARGET, TOKEN_TAGS, check_row
from pipeline.demo import supervised
from pipeline.demo.reviews import NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES
from pipeline.errors import DataError

TINY_BERT = {"family": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
             "vocab_size": 300}  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_task(tmp_path: Path, name: str, **stage) -> dict:
    """Run one task stage through `rlhf run` (1 thread); returns its metrics."""
    import yaml

    from pipeline.cli import main

    block = {"kind": "task", "batch_size": 32, "lr": 3e-3, "log_every": 100, **stage}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "t", "threads": 1, "stages": {name: block}}))
    assert main(["run", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    return json.loads((tmp_path / "run" / name / "rlhf_stage.json").read_text())["metrics"]


# ---------------------------------------------------------------- data formats
@pytest.mark.parametrize(
    "row, columns, message",
    [
        ({"text": "a", "label": True}, CLASSIFICATION, "field 'label' must be a string or an integer"),
        ({"text": "a", "label": 1.5}, CLASSIFICATION, "field 'label' must be a string or an integer"),
        ({"tokens": ["a", "b"], "tags": ["O"]}, TOKEN_TAGS, "2 tokens but 1 tags"),
        ({"tokens": "a b", "tags": ["O", "O"]}, TOKEN_TAGS, "field 'tokens' must be a list of strings"),
        ({"tokens": [], "tags": []}, TOKEN_TAGS, "field 'tokens' is an empty list"),
        ({"tokens": ["a"], "tags": [3]}, TOKEN_TAGS, "field 'tags' item 0 must be a non-empty string"),
        ({"source": "a", "target": ""}, SOURCE_TARGET, "field 'target' is empty"),
    ],
)
def test_task_formats_are_validated(row, columns, message):
    with pytest.raises(DataError, match=message):
        check_row(row, columns, "file 'x.jsonl', line 3")


def test_valid_task_rows_pass():
    check_row({"text": "a", "label": 2}, CLASSIFICATION, "x")
    check_row({"text": "a", "label": "positive"}, CLASSIFICATION, "x")
    check_row({"tokens": ["a", "b"], "tags": ["B-X", "O"]}, TOKEN_TAGS, "x")


@pytest.mark.parametrize("task", demo.SUPERVISED_TASKS)
def test_demo_tasks_have_disjoint_train_and_test_splits(task):
    splits = demo.generate(task)
    assert {k: len(v) for k, v in splits.items()} == demo.SUPERVISED_SIZES
    train = {json.dumps(r) for r in splits["train"]}
    assert not any(json.dumps(r) in train for r in splits["test"])


def test_demo_rows_by_hand():
    row = supervised.summary_row(random.Random(0))
    assert row == {
        "source": "review of the first poetry book : i read it on the train and it has four hundred pages , "
        "and the cover was cheap .",
        "target": "poetry book : cover bad",  # neutral clauses say nothing; "the train" is no aspect
    }
    review = supervised.tagged_review(random.Random(0))  # the same review, tagged
    tagged = {t: tag for t, tag in zip(review.tokens, review.tags) if tag != "O"}
    assert tagged == {"poetry": "B-PRODUCT", "book": "I-PRODUCT", "cover": "B-ASPECT"}
    opinions = supervised.tagged_review(random.Random(3)).opinions
    # "the battery was very poor , but the case is very perfect , but it seems weak ."
    assert opinions == [("battery", "bad"), ("case", "good"), ("it", "bad")]
    labels = {r["label"] for r in demo.generate_split("sentiment", "test")}
    assert labels == {"positive", "negative", "neutral"}


# ---------------------------------------------------------------- pieces of the stage
def test_token_labels_sit_on_the_first_sub_token_of_each_word():
    from pipeline.tokenizer_training import train_encoder_tokenizer
    from stages.objectives import IGNORE
    from stages.task import TaskStageConfig as Config
    from stages.task import encode

    tokenizer = train_encoder_tokenizer(["the lid is good ."] * 20, vocab_size=270)  # rare words split up
    row = {"tokens": ["the", "zipperlid", "is", "good"], "tags": ["O", "B-ASPECT", "O", "O"]}
    cfg = Config(task="token_classification", data="x")
    (item,) = encode([row], tokenizer, cfg, ["O", "B-ASPECT"])
    pieces = tokenizer.convert_ids_to_tokens(item["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > 6
    labelled = [(pieces[i], label) for i, label in enumerate(item["labels"]) if label != IGNORE]
    assert [label for _, label in labelled] == [0, 1, 0, 0]  # one label per word
    assert [pieces[t] for t in item["first_tokens"]] == [p for p, _ in labelled]
    assert pieces[item["first_tokens"][1]].lstrip("Ġ").startswith("z")  # the first piece of "zipperlid"


def test_trivial_baselines():
    from stages.task import trivial_baseline

    train = [{"label": "a"}, {"label": "b"}, {"label": "b"}]
    assert trivial_baseline(train, [{}, {}], "classification") == ["b", "b"]
    assert trivial_baseline([], [{"tokens": ["x", "y"]}], "token_classification") == [["O", "O"]]
    assert trivial_baseline([], [{"source": "s", "target": "t"}], "seq2seq") == ["s"]


def test_mixed_label_types_are_refused():
    from stages.task import label_names

    with pytest.raises(DataError, match="mix strings and integers"):
        label_names([{"label": 1}, {"label": "1"}], "classification")


# ---------------------------------------------------------------- the stage on tiny models
def toy_sentiment(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.6  # majority class: positive
        adjective = rng.choice(POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES)
        subject, aspect = rng.choice(["kettle", "tent", "novel"]), rng.choice(["lid", "price"])
        text = f"review of the {subject} : the {aspect} is {adjective} ."
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def test_classification_beats_the_majority_class(tmp_path):
    m = run_task(
        tmp_path,
        "sentiment",
        task="classification",
        data=write_jsonl(tmp_path / "train.jsonl", toy_sentiment(400, 0)),
        eval_data=write_jsonl(tmp_path / "test.jsonl", toy_sentiment(100, 1)),
        model=TINY_BERT,
        max_steps=60,
    )
    assert m["eval_accuracy"] > m["baseline_accuracy"] + 0.15
    assert m["eval_macro_f1"] > m["baseline_macro_f1"] + 0.2


def test_lora_writes_an_adapter_and_merged_weights(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_task(
        tmp_path,
        "sentiment",
        task="classification",
        data=write_jsonl(tmp_path / "train.jsonl", toy_sentiment(64, 0)),
        eval_fraction=0.0,
        model=TINY_BERT,
        max_steps=2,
        lora={"enabled": True, "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
    )
    out = tmp_path / "run" / "sentiment"
    model = AutoModelForSequenceClassification.from_pretrained(out)  # merged weights at the top
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert isinstance(PeftModel.from_pretrained(model, out / "adapter"), PeftModel)


def test_token_classification_beats_all_o_tags(tmp_path):
    m = run_task(
        tmp_path,
        "ner",
        task="token_classification",
        data=write_jsonl(tmp_path / "train.jsonl", demo.generate_split("ner", "train")[:600]),
        eval_data=write_jsonl(tmp_path / "test.jsonl", demo.generate_split("ner", "test")[:100]),
        model=TINY_BERT,
        max_steps=60,
    )
    assert m["baseline_f1"] == 0.0 and m["baseline_accuracy"] > 0.8
    assert m["eval_f1"] > 0.3 and m["eval_accuracy"] > m["baseline_accuracy"]


def test_seq2seq_trains_a_t5_and_scores_bleu_and_chrf(tmp_path):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    m = run_task(
        tmp_path,
        "summary",
        task="seq2seq",
        data=write_jsonl(tmp_path / "train.jsonl", demo.generate_split("summary", "train")[:300]),
        eval_data=write_jsonl(tmp_path / "test.jsonl", demo.generate_split("summary", "test")[:40]),
        model=TINY_BERT | {"family": "t5"},
        max_steps=40,
        max_new_tokens=12,
    )
    assert {"baseline_bleu", "baseline_chrf", "eval_bleu_before", "eval_chrf"} <= set(m)
    assert m["baseline_chrf"] > 20  # the copied source shares many characters with its summary
    assert m["eval_chrf"] > m["eval_chrf_before"]
    out = tmp_path / "run" / "summary"
    model, tokenizer = T5ForConditionalGeneration.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    generated = model.generate(
        **tokenizer(["review of the lid : it is good ."], return_tensors="pt"), max_new_tokens=8
    )
    assert generated.shape[0] == 1


def test_scratch_family_must_fit_the_task():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    data = {"stages": {"t": {"kind": "task", "task": "seq2seq", "data": "x.jsonl"}}}
    with pytest.raises(ConfigError, match="builds a model of family 't5'"):
        load_config(None, data=data)
