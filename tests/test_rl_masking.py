"""Masked reductions and response masks of the RL engine, checked against numbers worked by hand."""

from __future__ import annotations

import pytest
import torch

from stages.rl.masking import (
    first_true_indices,
    masked_mean,
    masked_sum,
    masked_var,
    place_sequence_reward,
    response_mask,
)

EOS = 2
NEWLINE = 13  # a custom stop token that is not EOS, e.g. "stop at the end of the line"
INF = float("inf")


def _close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_sum_all_and_per_dim() -> None:
    # kept: 1, 2 | 4  ->  total 7; rows 1+2=3, 4; columns 1+4=5, 2, 0
    _close(masked_sum(X, MASK), 7.0)
    _close(masked_sum(X, MASK, dim=1), [3.0, 4.0])
    _close(masked_sum(X, MASK, dim=0), [5.0, 2.0, 0.0])


def test_masked_mean_all_per_dim_and_bool_mask() -> None:
    # total 7 over 3 kept elements = 2.333333; rows (1+2)/2 = 1.5 and 4/1 = 4
    _close(masked_mean(X, MASK), 7.0 / 3.0)
    _close(masked_mean(X, MASK, dim=1), [1.5, 4.0])
    _close(masked_mean(X, MASK.bool(), dim=1), [1.5, 4.0])


def test_masked_mean_ignores_inf_and_nan_under_the_mask_and_empty_rows_give_zero() -> None:
    x = torch.tensor([[1.0, 3.0, INF], [float("nan"), -INF, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # row 0: (1+3)/2 = 2; row 1 has nothing unmasked -> 0 by convention
    per_row = masked_mean(x, mask, dim=1)
    _close(per_row.detach(), [2.0, 0.0])
    per_row.sum().backward()
    # d/dx of (x00 + x01)/2 is 1/2 for each kept element, 0 elsewhere (no NaN from the inf/nan entries)
    _close(x.grad, [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])


def test_masked_var_unbiased_and_biased() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # kept 1, 2, 3: mean 2, squared deviations 1 + 0 + 1 = 2; unbiased 2/(3-1) = 1, biased 2/3
    _close(masked_var(x, mask), 1.0)
    _close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)


def test_masked_var_with_inf_under_mask_has_finite_gradient() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, INF], requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    masked_var(x, mask).backward()
    # var = sum (x_i - mean)^2 / 2  ->  d/dx_i = (x_i - mean) = -1, 0, 1 (mean's own term sums to 0)
    _close(x.grad, [-1.0, 0.0, 1.0, 0.0])


def test_masked_var_rejects_too_few_elements() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))


def test_first_true_indices() -> None:
    bools = torch.tensor(
        [[False, True, False, True], [False, False, False, False], [True, False, False, False]]
    )
    # first True at 1; none -> T = 4; first True at 0
    assert first_true_indices(bools).tolist() == [1, 4, 0]
    assert first_true_indices(bools).dtype == torch.long


def test_response_mask_ends_early_never_ends_and_ends_on_last_token() -> None:
    responses = torch.tensor(
        [
            [5, EOS, 0, 7],  # EOS at index 1; 0 and 7 are garbage after it
            [5, 6, 7, 8],  # hit the length limit without stopping
            [5, 6, 7, EOS],  # stopped exactly on the last slot
            [5, EOS, EOS, EOS],  # padding with EOS after the first: only the first counts
        ]
    )
    mask, last_index, ended = response_mask(responses, [EOS])
    _close(mask, [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert mask.dtype == torch.float32
    assert last_index.tolist() == [1, 3, 3, 1]
    assert ended.tolist() == [True, False, True, True]


def test_response_mask_custom_stop_token_differs_from_eos() -> None:
    responses = torch.tensor([[5, NEWLINE, EOS, 9]])
    # stopping on NEWLINE: the later EOS is garbage -> real tokens are indices 0..1
    mask, last_index, ended = response_mask(responses, [NEWLINE])
    _close(mask, [[1, 1, 0, 0]])
    assert last_index.tolist() == [1] and ended.tolist() == [True]
    # stopping on EOS only: NEWLINE is an ordinary token, EOS at index 2 ends it
    mask, last_index, ended = response_mask(responses, [EOS])
    _close(mask, [[1, 1, 1, 0]])
    assert last_index.tolist() == [2] and ended.tolist() == [True]


def test_response_mask_several_stop_ids_first_of_any_wins() -> None:
    responses = torch.tensor([[5, 6, NEWLINE, EOS], [EOS, NEWLINE, 5, 6], [5, 6, 7, 8]])
    # row 0: NEWLINE at 2 comes first; row 1: EOS at 0; row 2: none -> T-1 = 3
    mask, last_index, ended = response_mask(responses, [EOS, NEWLINE])
    _close(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_index.tolist() == [2, 0, 3]
    assert ended.tolist() == [True, True, False]


def test_place_sequence_reward() -> None:
    scores = torch.tensor([0.5, -1.0, 2.0])
    # each score sits at its row's last index (1, 3, 0), zeros elsewhere
    rewards = place_sequence_reward(scores, torch.tensor([1, 3, 0]), length=4)
    _close(rewards, [[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0], [2.0, 0.0, 0.0, 0.0]])


def test_place_sequence_reward_on_response_mask_output() -> None:
    responses = torch.tensor([[5, EOS, 0, 7], [5, 6, 7, 8], [5, NEWLINE, EOS, 9]])
    _, last_index, _ = response_mask(responses, [EOS, NEWLINE])
    # last indices 1 (EOS), 3 (limit), 1 (NEWLINE)
    rewards = place_sequence_reward(torch.tensor([1.0, -0.5, 3.0]), last_index, length=4)
    _close(rewards, [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.5], [0.0, 3.0, 0.0, 0.0]])
