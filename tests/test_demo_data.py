"""Tests of the embedded demo data (determinism, sizes, hold-out, label noise) and the gold scorers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.demo import reviews, support
from reward_models.gold import GOLD_SCORERS, reviews_gold, support_gold
from reward_models.rules import arithmetic_exact, arithmetic_format, copy_exact, sort_exact

FIELDS = {
    "corpus": {"text"},
    "sft": {"prompt", "completion"},
    "prefs": {"prompt", "chosen", "rejected"},
    "prompts": {"prompt"},
    "eval_prompts": {"prompt"},
}
REPO_ROOT = Path(__file__).resolve().parents[1]
LANGUAGE_TASKS = ("reviews", "support")  # the tasks with a grammar of words and a graded gold score
GOLD = {**GOLD_SCORERS, "arithmetic": arithmetic_exact, "copy": copy_exact, "sort": sort_exact}
GOLD["chat"] = GOLD["reviews"]
PLAIN_TASKS = tuple(task for task in demo.TASKS if task != "chat")  # "chat" holds message lists


@cache
def data(task: str, seed: int = 0) -> dict[str, list[dict]]:
    return demo.generate(task, seed)


# ---------------------------------------------------------------- determinism and shape
@pytest.mark.parametrize("task", demo.TASKS)
def test_same_seed_same_data_other_seed_other_data(task):
    assert demo.generate(task, seed=0) == data(task, 0)
    other = data(task, 1)
    for split in demo.SPLITS:
        assert other[split] != data(task, 0)[split], split


def test_generate_split_matches_generate():
    assert demo.generate_split("reviews", "prefs", seed=3) == data("reviews", 3)["prefs"]


def test_identical_in_a_fresh_process_with_another_hash_seed():
    code = (
        "import hashlib, json; from pipeline.demo import generate_split; "
        "print(hashlib.sha256(json.dumps(generate_split('support', 'sft', 7)).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    here = hashlib.sha256(json.dumps(demo.generate_split("support", "sft", 7)).encode()).hexdigest()
    assert out.stdout.strip() == here, out.stderr


@pytest.mark.parametrize("task", PLAIN_TASKS)
def test_split_sizes_and_fields(task):
    splits = data(task)
    assert tuple(splits) == demo.SPLITS
    for split, rows in splits.items():
        assert len(rows) == demo.SIZES[split], split
        assert all(set(row) == FIELDS[split] for row in rows), split
        assert all(isinstance(value, str) and value for row in rows for value in row.values()), split


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_prompt_and_completion_format(task):
    splits = data(task)
    prompt_splits = ("sft", "prefs", "prompts", "eval_prompts")
    prompts = [row["prompt"] for split in prompt_splits for row in splits[split]]
    assert all(p == p.strip() and p.endswith(":") for p in prompts)  # no trailing space: completions bring it
    completions = [row["completion"] for row in splits["sft"]]
    assert all(c.startswith(" ") and c == " " + " ".join(c.split()) for c in completions)
    assert max(len(c.split()) for c in completions) <= 23  # at most 3 clauses, ~20 words plus punctuation
    unfinished = sum(not c.endswith(" .") for c in completions) / len(completions)
    assert 0.02 < unfinished < 0.1


def test_chat_splits_are_the_reviews_task_as_conversations():
    from pipeline.data import (
        CONVERSATIONAL,
        PREFERENCE,
        PROMPT_COMPLETION,
        PROMPT_ONLY,
        check_conversation_row,
    )

    splits, reviews = data("chat"), data("reviews")
    assert tuple(splits) == demo.SPLITS and splits["corpus"] == reviews["corpus"]
    formats = {
        "sft": PROMPT_COMPLETION,
        "prefs": PREFERENCE,
        "prompts": PROMPT_ONLY,
        "eval_prompts": PROMPT_ONLY,
    }
    for split, columns in formats.items():
        assert len(splits[split]) == demo.SIZES[split]
        assert columns in CONVERSATIONAL
        for n, row in enumerate(splits[split]):
            check_conversation_row(row, columns, f"{split} row {n}")
            first = row.get("messages") or row["prompt"]
            assert first[0] == {"role": "system", "content": demo.CHAT_SYSTEM}
    # about 30% of conversations hold an earlier exchange: two assistant turns in SFT
    replies = [sum(m["role"] == "assistant" for m in row["messages"]) for row in splits["sft"]]
    assert set(replies) == {1, 2} and 0.25 < replies.count(2) / len(replies) < 0.35
    # the user's turns are reviews prompts and the replies reviews completions, without the joining space
    last_user = [row["prompt"][-1]["content"] for row in splits["prompts"]]
    assert all(prompt.endswith(" :") for prompt in last_user)
    assert all(not m["content"].startswith(" ") for row in splits["sft"] for m in row["messages"])


# ---------------------------------------------------------------- held-out evaluation prompts
@pytest.mark.parametrize("task", demo.TASKS)
def test_eval_prompts_unique_and_disjoint_from_training(task):
    from pipeline.chat import display

    splits = data(task)
    eval_prompts = [display(row["prompt"]) for row in splits["eval_prompts"]]
    assert len(set(eval_prompts)) == len(eval_prompts)
    training = {display(row["prompt"]) for split in ("prefs", "prompts") for row in splits[split]}
    training |= {display(row.get("prompt") or row["messages"][:-1]) for row in splits["sft"]}
    assert not training & set(eval_prompts)
    if task == "chat":  # and no eval conversation asks about a subject a training one asks about
        asked = {display(row["prompt"][-1]["content"]) for row in splits["prompts"]}
        assert not asked & {row["prompt"][-1]["content"] for row in splits["eval_prompts"]}


def _held_out_things(task: str) -> list[str]:
    """The subjects (reviews) or customer issues (support) that the eval prompts are about."""
    if task == "reviews":
        return [s for family in reviews.FAMILIES.values() for s in family.subjects]
    return list(support.ISSUES)


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_eval_subjects_never_seen_in_training_prompts(task):
    splits = data(task)
    training = [row["prompt"] for split in ("sft", "prefs", "prompts") for row in splits[split]]
    evaluation = [row["prompt"] for row in splits["eval_prompts"]]

    def mention(thing: str, prompt: str) -> bool:
        return prompt.endswith(f" {thing} :") if task == "reviews" else thing in prompt

    held_out = {t for t in _held_out_things(task) if any(mention(t, p) for p in evaluation)}
    assert len(held_out) >= 5
    assert not any(mention(t, p) for t in held_out for p in training)


# ---------------------------------------------------------------- preferences and SFT statistics
@pytest.mark.parametrize("task", demo.TASKS)
def test_prefs_are_gold_ranked_with_about_ten_percent_noise(task):
    prefs = data(task)["prefs"]
    gold = GOLD[task]
    chosen = gold([r["prompt"] for r in prefs], [r["chosen"] for r in prefs])
    rejected = gold([r["prompt"] for r in prefs], [r["rejected"] for r in prefs])
    assert all(r["chosen"] != r["rejected"] for r in prefs)
    assert all(c != r for c, r in zip(chosen, rejected))  # ties were skipped
    agreement = sum(c > r for c, r in zip(chosen, rejected)) / len(prefs)
    assert 0.80 <= agreement <= 0.97


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_sft_sentiment_is_mixed(task):
    sft = data(task)["sft"]
    scores = GOLD[task]([r["prompt"] for r in sft], [r["completion"] for r in sft])
    assert -0.5 <= statistics.mean(scores) <= 0.5
    assert statistics.pstdev(scores) >= 1.0
    assert all(-5.0 <= s <= 5.0 for s in scores)


# ---------------------------------------------------------------- arithmetic: a verifiable reward
EQUATION = re.compile(r"q : (\d{1,2}) ([+-]) (\d{1,2}) = \?")


def _operands(prompt: str) -> tuple[int, str, int]:
    match = EQUATION.fullmatch(prompt)
    assert match, prompt
    return int(match[1]), match[2], int(match[3])


def _exact_rate(prompts: list[str], completions: list[str]) -> float:
    return statistics.mean(arithmetic_exact(prompts, completions))


def test_arithmetic_prompts_are_small_equations_with_results_in_0_to_99():
    splits = data("arithmetic")
    prompts = [
        row["prompt"] for split in ("sft", "prefs", "prompts", "eval_prompts") for row in splits[split]
    ]
    for prompt in prompts:
        left, operator, right = _operands(prompt)  # also: no trailing space
        assert 0 <= (left + right if operator == "+" else left - right) <= 99, prompt
    assert {_operands(p)[1] for p in prompts} == {"+", "-"}
    assert any(_operands(p)[0] < 10 for p in prompts) and any(_operands(p)[0] >= 10 for p in prompts)


def test_arithmetic_sft_is_correct_only_part_of_the_time():
    sft = data("arithmetic")["sft"]
    prompts, completions = [r["prompt"] for r in sft], [r["completion"] for r in sft]
    assert 0.38 <= _exact_rate(prompts, completions) <= 0.52  # far below 100%: room for RL
    well_formed = statistics.mean(arithmetic_format(prompts, completions))
    assert 0.7 <= well_formed <= 0.9  # ARITHMETIC_FLAW_RATE of the answers are in a wrong format
    assert all(c.startswith(" ") and c == " " + " ".join(c.split()) for c in completions)
    # a wrong number is off by a little, never wildly wrong
    for prompt, completion in zip(prompts, completions):
        if arithmetic_format([prompt], [completion]) == [1.0]:
            left, operator, right = _operands(prompt)
            truth = left + right if operator == "+" else left - right
            assert abs(int(completion.split()[2]) - truth) in (0, 1, 2, 10), (prompt, completion)


def test_arithmetic_corpus_mixes_right_and_wrong_answers_and_number_facts():
    corpus = [row["text"] for row in data("arithmetic")["corpus"]]
    dialogues = [text.split(" a : ") for text in corpus if text.startswith("q : ")]
    assert 0.6 <= len(dialogues) / len(corpus) <= 0.8  # CORPUS_DIALOGUE_SHARE, the rest number facts
    assert all(len(parts) == 2 for parts in dialogues)
    rate = _exact_rate([prompt for prompt, _ in dialogues], [f" a : {answer}" for _, answer in dialogues])
    assert 0.38 <= rate <= 0.52  # pretraining alone does not solve the task


def test_arithmetic_prefs_choose_the_correct_answer_about_ninety_percent_of_the_time():
    prefs = data("arithmetic")["prefs"]
    prompts = [r["prompt"] for r in prefs]
    chosen = arithmetic_exact(prompts, [r["chosen"] for r in prefs])
    rejected = arithmetic_exact(prompts, [r["rejected"] for r in prefs])
    assert all(c + r == 1.0 for c, r in zip(chosen, rejected))  # exactly one of the two is correct
    assert 0.86 <= statistics.mean(chosen) <= 0.94  # LABEL_NOISE = 0.1 of pairs swapped


def test_arithmetic_eval_operand_pairs_never_in_training_or_corpus():
    splits = data("arithmetic")

    def pairs(text: str) -> set[tuple[int, int]]:
        """Every operand pair in the text, unordered: "7 + 5", "5 + 7" and "7 - 5" share one."""
        return {(min(int(a), int(b)), max(int(a), int(b))) for a, _, b in EQUATION.findall(text)}

    # every equation anywhere in the training text, the ones in rambling completions included
    training_text = [value for split in ("corpus", "sft", "prefs", "prompts") for r in splits[split]
                     for value in r.values()]  # fmt: skip
    training = set().union(*(pairs(text) for text in training_text))
    held_out = set().union(*(pairs(r["prompt"]) for r in splits["eval_prompts"]))
    assert len(training) > 3000 and len(held_out) >= 100
    assert not training & held_out


@pytest.mark.parametrize("task, shown", [("copy", "again"), ("sort", "in order")])
def test_held_out_digit_strings_never_in_training_or_corpus(task, shown):
    """No held-out string is asked, or answered right, anywhere in training. (A wrong answer to a training
    prompt may spell one by chance: it pairs it with another question, so it teaches nothing about it.)"""
    splits = data(task)
    asked = re.compile(rf"{task} ([0-9] [0-9] [0-9]) = \?")
    copied = re.compile(rf"the digits ([0-9] [0-9] [0-9]) {shown}")
    held_out = {m for r in splits["eval_prompts"] for m in asked.findall(r["prompt"])}
    training_text = [value for split in ("corpus", "sft", "prefs", "prompts") for r in splits[split]
                     for value in r.values()]  # fmt: skip
    seen = {m for text in training_text for pattern in (asked, copied) for m in pattern.findall(text)}
    assert len(held_out) >= 100 and len(seen) > 500
    assert not seen & held_out


@pytest.mark.parametrize("task", ["copy", "sort"])
def test_digit_task_sft_answers_are_right_about_half_the_time(task):
    sft = data(task)["sft"]
    rate = statistics.mean(GOLD[task]([r["prompt"] for r in sft], [r["completion"] for r in sft]))
    assert 0.38 <= rate <= 0.52  # ARITHMETIC_CORRECT_RATE: room for RL against the verifiable reward


def test_arithmetic_held_out_results_cover_every_residue():
    """The hold-out rule must not be a function of the result (as (left + right) % 4 would be)."""
    eval_results = [int(result) for _, result in demo.SPECS["arithmetic"].eval_pool]
    assert len(eval_results) > 2000
    assert {r % 4 for r in eval_results} == {0, 1, 2, 3}
    assert len(set(eval_results)) == 100


# ---------------------------------------------------------------- gold scorers, worked by hand
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" the plot is great .", 1.0),  # one positive adjective
        (" the lid is awful .", -1.0),  # one negative adjective
        (" the plot is not great .", -1.0),  # negation flips +1 -> -1
        (" the motor is very good .", 1.5),  # intensifier: +1 x 1.5
        (" the motor is not really bad .", 1.5),  # -1 x 1.5, then flipped by "not"
        (" the motor is great but the lid is awful .", 0.0),  # +1 - 1
        (" it is great and great and great .", 1.0),  # "great" counts once, not 3 times
        (" the plot is great , the cast is great .", 1.0),  # the same adjective in two clauses: once
        (" the plot is great and the cast is superb .", 2.0),  # two distinct adjectives: +1 +1
        (" the plot is great but", 0.0),  # +1, then -1: no final " ."
        (" the plot is great .  \n", 1.0),  # trailing whitespace is not "unfinished"
        ("", -1.0),  # nothing said: unfinished
        (" i saw it last week .", 0.0),  # no sentiment at all
        # four distinct intensified positives: 4 x 1.5 = 6, clipped to 5
        (" it is very great , it is very good , it is very nice , it is very lovely .", 5.0),
    ],
)
def test_reviews_gold_examples(completion, expected):
    assert reviews_gold([""], [completion]) == [expected]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" sorry for the delay .", 1.0),  # apology
        (" i will refund you .", 1.5),  # concrete action
        (" thanks for waiting .", 0.5),  # thanks ("waiting" is not the rude "wait")
        (" not my problem .", -1.5),  # rude
        (" sorry for the delay , i will refund you .", 2.5),  # 1 + 1.5
        (" sorry , sorry , i am sorry .", 1.0),  # apologising three times counts once
        (" i will refund you and i will send a replacement .", 3.0),  # two distinct actions: 1.5 + 1.5
        (" i will refund you . i will refund the charge .", 1.5),  # the same action twice: once
        (" wait . read the manual .", -3.0),  # two distinct rude phrases: -1.5 - 1.5
        (" sorry for the delay , i will refund", 1.5),  # 1 + 1.5, then -1: unfinished
        (" one moment please .", 0.0),  # neutral
    ],
)
def test_support_gold_examples(completion, expected):
    assert support_gold(["customer : my order is late . agent :"], [completion]) == [expected]


def test_gold_accepts_conversational_completions_and_extra_kwargs():
    completions = [[{"role": "assistant", "content": " the plot is great ."}]]
    assert reviews_gold(prompts=["x"], completions=completions, completion_ids=[[1, 2]], label=[0]) == [1.0]


def test_every_support_reply_phrase_scores_as_its_category():
    expected = {"apology": 1.0, "action": 1.5, "thanks": 0.5, "rude": -1.5, "neutral": 0.0}
    for category, phrases in support.REPLY_PHRASES.items():
        for phrase in phrases:
            assert support_gold([""], [f" {phrase} ."]) == [expected[category]], phrase


# ---------------------------------------------------------------- files and errors
def test_write_round_trips_through_json(tmp_path):
    paths = demo.write("reviews", tmp_path / "demo", seed=2)
    assert set(paths) == set(demo.SPLITS)
    for split, path in paths.items():
        assert path == tmp_path / "demo" / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows == data("reviews", 2)[split]


def test_unknown_task_or_split_names_the_valid_ones():
    with pytest.raises(ValueError, match="reviews, support"):
        demo.generate("weather")
    with pytest.raises(ValueError, match="corpus, sft, prefs, prompts, eval_prompts"):
        demo.generate_split("reviews", "test")
