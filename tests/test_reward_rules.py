"""Tests of the programmatic reward functions in reward_models/rules.py, worked by hand, and of how
call_reward_function reports a reward function that misbehaves."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import UserError
from reward_models.functions import call_reward_function, load_reward_function
from reward_models.rules import (
    arithmetic_exact,
    arithmetic_format,
    ends_with_period,
    length_penalty,
    parse_answer,
    true_result,
)

ADD = "q : 7 + 5 = ?"
SUBTRACT = "q : 57 - 23 = ?"


# ---------------------------------------------------------------- arithmetic_exact
@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        (ADD, " a : 12 .", 1.0),  # correct
        (ADD, " a : 13 .", 0.0),  # off by one
        (ADD, " a : 2 .", 0.0),  # subtracted instead of added
        (SUBTRACT, " a : 34 .", 1.0),  # subtraction: 57 - 23 = 34
        (SUBTRACT, " a : 80 .", 0.0),  # added instead of subtracted
        ("q : 3 - 5 = ?", " a : -2 .", 1.0),  # a negative result parses too
        ("q : 0 + 0 = ?", " a : 0 .", 1.0),
        (ADD, " a : ? .", 0.0),  # no number at all
        (ADD, "", 0.0),  # nothing said
        (ADD, " a : twelve .", 0.0),  # a number in words is not parsable
        (ADD, " a : 12.", 0.0),  # "12." is one token, not the number 12
        (ADD, " 12 .", 1.0),  # wrong format, right number: exact ignores the format
        (ADD, " a : 12", 1.0),  # unfinished, right number
        (ADD, " a : 12 . q : 1 + 1 = ? a : 2 .", 1.0),  # rambling: the first number is the answer
        (ADD, " a : 11 . q : 6 + 6 = ? a : 12 .", 0.0),  # ... and a later right number does not count
        (ADD, "  a :   12  .\n", 1.0),  # extra whitespace does not change the answer
    ],
)
def test_arithmetic_exact_examples(prompt, completion, expected):
    assert arithmetic_exact([prompt], [completion]) == [expected]


def test_arithmetic_exact_scores_a_batch_pairwise():
    prompts = [ADD, SUBTRACT, ADD, SUBTRACT]
    completions = [" a : 12 .", " a : 12 .", " a : 34 .", " a : 34 ."]
    assert arithmetic_exact(prompts, completions) == [1.0, 0.0, 0.0, 1.0]


def test_true_result_and_parse_answer():
    assert true_result("q : 99 - 0 = ?") == 99
    assert true_result("q : 40 + 59 = ?") == 99
    assert parse_answer(" a : 7 .") == 7
    assert parse_answer(" a : -7 .") == -7
    assert parse_answer(" a : .") is None


def test_arithmetic_exact_refuses_a_prompt_without_an_equation():
    with pytest.raises(ValueError, match="no equation"):
        arithmetic_exact(["review of the new blender :"], [" a : 12 ."])


def test_arithmetic_exact_accepts_conversational_rows_and_extra_kwargs():
    prompts = [[{"role": "user", "content": ADD}]]
    completions = [[{"role": "assistant", "content": " a : 12 ."}]]
    assert arithmetic_exact(prompts=prompts, completions=completions, completion_ids=[[1]], label=[0]) == [
        1.0
    ]


# ---------------------------------------------------------------- arithmetic_format
@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" a : 12 .", 1.0),
        (" a : 13 .", 1.0),  # wrong number, right format
        (" a : -2 .", 1.0),
        (" a : 12", 0.0),  # unfinished
        (" 12 .", 0.0),  # no "a :"
        ("a : 12 .", 0.0),  # no leading space
        (" a : 12.", 0.0),  # no space before the full stop
        (" a :  12 .", 0.0),  # two spaces
        (" a : 12 . ", 0.0),  # something after the full stop
        (" a : 12 . q : 1 + 1 = ? a : 2 .", 0.0),  # rambling
        (" a : ? .", 0.0),  # no number
        (" a : 1.5 .", 0.0),  # not an integer
        ("", 0.0),
    ],
)
def test_arithmetic_format_examples(completion, expected):
    assert arithmetic_format([ADD], [completion]) == [expected]


# ---------------------------------------------------------------- length_penalty and ends_with_period
@pytest.mark.parametrize(
    ("completion", "target_words", "expected"),
    [
        (" a : 12 .", 12, 0.0),  # 4 words: under the target
        (" ".join(["w"] * 12), 12, 0.0),  # exactly the target
        (" a : 12 . q : 1 + 1 = ? a : 2 .", 12, -0.25),  # 15 words: -(15 - 12) / 12
        (" ".join(["w"] * 24), 12, -1.0),  # twice the target
        (" a : 12 . a : 12 .", 4, -1.0),  # 8 words, target 4: -(8 - 4) / 4
        (" a : 12 . ok", 4, -0.25),  # 5 words, target 4
        ("", 12, 0.0),
    ],
)
def test_length_penalty_examples(completion, target_words, expected):
    assert length_penalty([ADD], [completion], target_words=target_words) == [expected]


def test_length_penalty_default_target_is_twelve_and_zero_is_refused():
    assert length_penalty([ADD], [" ".join(["w"] * 18)]) == [-0.5]
    with pytest.raises(ValueError, match="target_words"):
        length_penalty([ADD], [" a : 1 ."], target_words=0)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" a : 12 .", 1.0),
        (" the plot is great .  \n", 1.0),  # trailing whitespace is stripped
        (" a : 12.", 1.0),  # a full stop glued to the word still ends the reply
        (" a : 12", 0.0),
        (" a : 12 . ok", 0.0),
        ("", 0.0),
    ],
)
def test_ends_with_period_examples(completion, expected):
    assert ends_with_period([ADD], [completion]) == [expected]


# ---------------------------------------------------------------- through the reward-function interface
def test_arithmetic_exact_end_to_end_through_load_and_call():
    spec = "reward_models.rules:arithmetic_exact"
    fn = load_reward_function(spec)
    rewards = call_reward_function(fn, spec, [ADD, SUBTRACT, ADD], [" a : 12 .", " a : 33 .", " a : ."])
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["arithmetic_format", "length_penalty", "ends_with_period"])
def test_every_rule_loads_by_name_and_returns_one_finite_value_each(name):
    spec = f"reward_models.rules:{name}"
    rewards = call_reward_function(load_reward_function(spec), spec, [ADD, ADD], [" a : 12 .", " a : 12"])
    assert rewards.shape == (2,) and all(math.isfinite(v) for v in rewards.tolist())


def test_a_prompt_from_the_wrong_task_is_an_error_naming_the_function():
    spec = "reward_models.rules:arithmetic_exact"
    with pytest.raises(UserError, match=r"'reward_models\.rules:arithmetic_exact' raised ValueError"):
        call_reward_function(load_reward_function(spec), spec, ["review of the oven :"], [" a : 1 ."])


# ---------------------------------------------------------------- reward functions that misbehave
def bad_raises(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    raise RuntimeError("scorer exploded")


def bad_wrong_count(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    return [1.0] * (len(completions) + 1)


def bad_nan(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    return [float("nan")] * len(completions)


def bad_not_a_number(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    return ["high"] * len(completions)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_raises", r"raised RuntimeError: scorer exploded"),
        ("bad_wrong_count", r"returned 3 values for 2 completions"),
        ("bad_nan", r"returned a non-finite or non-numeric value at index 0: nan"),
        ("bad_not_a_number", r"returned a non-finite or non-numeric value at index 0: 'high'"),
    ],
)
def test_a_misbehaving_reward_function_is_a_user_error_naming_it(name, message):
    # __name__, not "tests.test_reward_rules": pytest imports this file as a top-level module
    spec = f"{__name__}:{name}"
    fn = load_reward_function(spec)
    with pytest.raises(UserError, match=rf"Reward function '{spec}' {message}"):
        call_reward_function(fn, spec, [ADD, ADD], [" a : 12 .", " a : 13 ."])


def test_copy_exact_compares_the_digits_after_copy():
    from reward_models.rules import copy_exact

    prompts = ["q : copy 3 9 4 = ?"] * 4
    # exact; exact without the final period; a changed digit; a dropped digit
    completions = [" a : 3 9 4 .", " a : 3 9 4", " a : 3 9 5 .", " a : 3 9 ."]
    assert copy_exact(prompts, completions) == [1.0, 1.0, 0.0, 0.0]


def test_sort_exact_wants_the_digits_in_ascending_order():
    from reward_models.rules import sort_exact

    prompts = ["q : sort 3 9 4 = ?"] * 4 + ["q : sort 7 1 7 = ?"]
    # sorted; sorted without the period; copied unsorted; descending; repeated digits kept
    completions = [" a : 3 4 9 .", " a : 3 4 9", " a : 3 9 4 .", " a : 9 4 3 .", " a : 1 7 7 ."]
    assert sort_exact(prompts, completions) == [1.0, 1.0, 0.0, 0.0, 1.0]
