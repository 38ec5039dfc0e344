"""Advantage estimators for the RL family: GAE (PPO), group-normalised (GRPO), leave-one-out (RLOO),
and the REINFORCE baselines (batch mean, running mean, greedy/ReMax), plus whitening and reward-to-go.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]  # sums a tensor over processes (torch.distributed); identity for one


def _local(total: Tensor) -> Tensor:
    return total


def mean_and_var(x: Tensor, mask: Tensor, reduce: Reduce = _local) -> tuple[float, float]:
    """Masked mean and unbiased variance, from float64 sums that `reduce` adds up over processes."""
    mask = mask.bool()
    values = torch.where(mask, x, torch.zeros_like(x)).double()
    sums = reduce(torch.stack([values.sum(), mask.sum().double()]))
    mean = float(sums[0] / sums[1].clamp(min=1))
    centered = torch.where(mask, x.double() - mean, torch.zeros_like(values))
    sums = reduce(torch.stack([(centered**2).sum(), mask.sum().double()]))
    return mean, float(sums[0] / (sums[1] - 1).clamp(min=1))


def whiten(
    x: Tensor,
    mask: Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
    reduce: Reduce = _local,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) over masked elements; var unbiased (as TRL, summarize_from_feedback).
    The statistics are over every process's elements when `reduce` sums over processes.

    shift_mean=False adds the mean back: (x - mean) / std + mean, as TRL and OpenAI's lm-human-preferences
    whiten rewards. That is not a rescaling: values can change sign ([-1, .5, 100] -> [32.58, 32.60, 34.32]).
    0 where mask == 0.
    """
    mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
    mean, variance = mean_and_var(x, mask, reduce)
    whitened = (x - mean) * (variance + eps) ** -0.5
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def scale(x: Tensor, mask: Tensor, eps: float = 1e-8, reduce: Reduce = _local) -> Tensor:
    """x / sqrt(var + eps), not re-centred: a baseline already subtracted (running, greedy) stays the one
    that shapes the advantages. 0 where mask == 0."""
    mask = mask.bool()
    _, variance = mean_and_var(x, mask, reduce)
    return torch.where(mask, x * (variance + eps) ** -0.5, torch.zeros_like(x))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over [B, T] with a right-padded mask.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t ;  A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1} ;
    returns = A + V. The step after the last real token is terminal (m = 0); rewards and values beyond the
    mask are ignored. Returns (advantages, returns), both 0 where mask == 0.
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    values = torch.where(mask, values, torch.zeros_like(values))
    # Shift left by one so position t sees V_{t+1} and m_{t+1}; past the end is terminal.
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1))
    next_mask = torch.nn.functional.pad(mask[:, 1:].to(values.dtype), (0, 1))
    deltas = rewards + gamma * next_values * next_mask - values
    advantage = torch.zeros_like(deltas[:, 0])
    reversed_advantages = []
    for t in reversed(range(deltas.size(1))):
        advantage = deltas[:, t] + gamma * lam * next_mask[:, t] * advantage
        reversed_advantages.append(advantage)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    advantages = torch.where(mask, advantages, torch.zeros_like(advantages))
    return advantages, torch.where(mask, advantages + values, torch.zeros_like(advantages))


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Per-token reward-to-go G_t = r_t + gamma * m_{t+1} * G_{t+1} over [B, T]; 0 where mask == 0.

    REINFORCE's return when the reward is spread over tokens (e.g. a per-token KL penalty plus a final score).
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    next_mask = torch.nn.functional.pad(mask[:, 1:].to(rewards.dtype), (0, 1))
    running = torch.zeros_like(rewards[:, 0])
    reversed_returns = []
    for t in reversed(range(rewards.size(1))):
        running = rewards[:, t] + gamma * next_mask[:, t] * running
        reversed_returns.append(running)
    returns = torch.stack(reversed_returns[::-1], dim=1)
    return torch.where(mask, returns, torch.zeros_like(returns))


def _grouped(scores: Tensor, group_size: int) -> Tensor:
    """[n_groups * group_size] -> [n_groups, group_size]; consecutive rows are completions of one prompt."""
    if group_size < 1 or scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"scores must be 1-D with a length divisible by group_size; got shape {tuple(scores.shape)} "
            f"and group_size {group_size}"
        )
    return scores.view(-1, group_size)


def group_normalized_advantages(
    scores: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Tensor:
    """GRPO (Shao et al. 2024): A_i = (s_i - mean_g) / (std_g + eps) if scale, else s_i - mean_g.

    mean_g and std_g are over the completions of the same prompt; std is unbiased, as in TRL's GRPO.
    """
    grouped = _grouped(scores, group_size)
    if scale and group_size < 2:
        raise ValueError("group_normalized_advantages with scale=True needs group_size >= 2 for a std")
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centered.reshape(-1)


def leave_one_out_advantages(scores: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = s_i - (sum_{j in group, j != i} s_j) / (k - 1), k = group_size."""
    if group_size < 2:
        raise ValueError(f"leave_one_out_advantages needs group_size >= 2, got {group_size}")
    grouped = _grouped(scores, group_size)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def batch_baseline_advantages(scores: Tensor) -> Tensor:
    """REINFORCE with a batch-mean baseline: A_i = s_i - mean_j s_j."""
    return scores - scores.mean()


def greedy_baseline_advantages(scores: Tensor, greedy_scores: Tensor) -> Tensor:
    """ReMax (Li et al. 2023): A_i = s_i - s(greedy response to the same prompt)."""
    if scores.shape != greedy_scores.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and greedy_scores {tuple(greedy_scores.shape)} differ"
        )
    return scores - greedy_scores


class RunningMeanBaseline:
    """REINFORCE with a running baseline: b <- momentum * b + (1 - momentum) * mean(batch scores).

    Each batch is scored against the baseline from before it (A = s - b_old), so a batch never baselines
    itself; the first batch, having no history, uses its own mean.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.value: float | None = None

    def advantages(self, scores: Tensor, batch_mean: float | None = None) -> Tensor:
        """`batch_mean` overrides the mean of `scores` (e.g. the mean over all processes' scores)."""
        batch_mean = float(scores.detach().float().mean()) if batch_mean is None else batch_mean
        baseline = batch_mean if self.value is None else self.value
        self.value = self.momentum * baseline + (1.0 - self.momentum) * batch_mean
        return scores - baseline

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, d: dict) -> None:
        self.momentum = float(d["momentum"])
        self.value = None if d["value"] is None else float(d["value"])
