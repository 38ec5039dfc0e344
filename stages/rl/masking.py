"""Masked reductions and response masks: which generated tokens are real, and where a sequence reward lands.

Masks are float or bool tensors shaped like the data, 1 = real token. Masked positions may hold anything
(padding, -inf, NaN); every reduction selects with `torch.where` so they never leak into results or gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i m_i x_i over all elements (dim=None) or along `dim`; masked values dropped, not multiplied."""
    # torch.where rather than x * mask: 0 * inf = nan, and garbage at padded positions may be inf.
    selected = torch.where(mask.bool(), x, torch.zeros_like(x))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum_i m_i x_i / sum_i m_i over all elements (dim=None) or along `dim`; 0 where nothing is unmasked."""
    count = mask.bool().to(x.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    # An all-padding row has no mean; 0 keeps it from poisoning a batch average with NaN.
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over all masked elements: sum_i m_i (x_i - mean)^2 / (n - 1) if unbiased, else / n."""
    n = int(mask.bool().sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} unmasked elements, got {n}")
    mean = masked_mean(x, mask)
    # Select before squaring so inf at masked positions yields neither a NaN value nor a NaN gradient.
    centered = torch.where(mask.bool(), x - mean, torch.zeros_like(x))
    return (centered**2).sum() / (n - 1 if unbiased else n)


def first_true_indices(bools: Tensor, dtype: torch.dtype = torch.long) -> Tensor:
    """[B, T] bool -> [B]: index of the first True in each row, or T if the row has none."""
    length = bools.size(-1)
    # False positions get index + T, so the row minimum is the first True, or >= T when there is none.
    positions = torch.arange(length, dtype=dtype, device=bools.device)
    candidates = positions + length * (~bools).to(dtype)
    return candidates.min(dim=-1).values


def response_mask(response_ids: Tensor, stop_token_ids: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Mark the real tokens of generated responses [B, T]; tokens after the first stop token are garbage.

    Returns (mask [B, T] float: 1 up to and including the first stop token, 0 after;
             last_index [B] long: the last real token, i.e. the stop token if the response ended, else T-1;
             ended [B] bool: whether any stop token occurred).
    The stop token stays in the mask: the policy chose to stop there, and that choice earns the reward.
    """
    length = response_ids.size(-1)
    stops = torch.as_tensor(list(stop_token_ids), dtype=response_ids.dtype, device=response_ids.device)
    first_stop = first_true_indices(torch.isin(response_ids, stops))
    ended = first_stop < length
    positions = torch.arange(length, device=response_ids.device)
    mask = (positions.unsqueeze(0) <= first_stop.unsqueeze(-1)).float()
    last_index = torch.where(ended, first_stop, torch.full_like(first_stop, length - 1))
    return mask, last_index, ended


def place_sequence_reward(scores: Tensor, last_index: Tensor, length: int) -> Tensor:
    """[B] sequence scores -> [B, length] token rewards: r[b, t] = scores[b] if t == last_index[b] else 0."""
    rewards = torch.zeros(scores.size(0), length, dtype=scores.dtype, device=scores.device)
    return rewards.scatter(1, last_index.long().unsqueeze(-1), scores.unsqueeze(-1))
