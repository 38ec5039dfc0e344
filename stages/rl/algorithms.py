"""The one place the RL algorithms differ: how a rollout's rewards become per-token advantages.

  ppo        token rewards (per-token KL penalty + score on the last real token) -> GAE with a value head
  grpo       score normalised within each prompt's group of samples (Shao et al., 2024); KL in the loss
  rloo       score minus the mean of the other samples of the same prompt (Ahmadian et al., 2024)
  reinforce  score minus a baseline: the batch mean, a running mean, or the greedy response (ReMax)
Sequence-level advantages are given to every token of the response, as those papers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline import distributed
from stages.rl import advantages as adv
from stages.rl.masking import place_sequence_reward

ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce")
KL_IN_LOSS_BY_DEFAULT = {"ppo": False, "grpo": True, "rloo": False, "reinforce": False}


@dataclass
class Advantages:
    advantages: Tensor  # [B, T], zero on padding
    returns: Tensor | None  # [B, T] value targets (PPO only)


def global_mean(x: Tensor, weight: Tensor) -> float:
    """Weighted mean over every process's rows (weight 0 marks a placeholder row)."""
    total = distributed.all_sum(torch.stack([(x * weight).sum(), weight.sum()]).double())
    return float(total[0] / total[1].clamp(min=1))


def global_mean_and_var(x: Tensor, mask: Tensor) -> tuple[float, float]:
    """Masked mean and unbiased variance over every process's elements (float64 sums)."""
    mean = global_mean(x, mask)
    sums = distributed.all_sum(torch.stack([(((x - mean) ** 2) * mask).sum(), mask.sum()]).double())
    return mean, float(sums[0] / (sums[1] - 1).clamp(min=1))


def global_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """`advantages.whiten` with the mean and (unbiased) variance taken over all processes."""
    mean, var = global_mean_and_var(x, mask)
    white = (x - mean) * (var + eps) ** -0.5
    return (white if shift_mean else white + mean) * mask


def global_scale(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """x / sqrt(var + eps) over all processes, not re-centred: the baseline already subtracted stays the one
    that shapes the advantages (a running or greedy baseline would otherwise become the batch mean)."""
    _, var = global_mean_and_var(x, mask)
    return x * (var + eps) ** -0.5 * mask


def compute(
    algorithm: str,
    scores: Tensor,
    kl: Tensor,
    kl_coef: float,
    mask: Tensor,
    last_index: Tensor,
    row_weight: Tensor,
    *,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    group_size: int = 1,
    scale_rewards: bool = True,
    whiten_advantages: bool = True,
    whiten_rewards: bool = False,
    baseline: str = "batch",
    running: adv.RunningMeanBaseline | None = None,
    greedy_scores: Tensor | None = None,
    greedy_kl: Tensor | None = None,
) -> Advantages:
    """`kl` is the per-token KL estimate [B, T] (zero where the KL is not a reward penalty), `scores` [B];
    `mask` is zero on placeholder rows (row_weight 0), so they contribute to nothing. `greedy_kl` is the KL of
    the greedy responses (ReMax's baseline), which are shaped like the samples: score - kl_coef * sum(KL).

    Whitening re-centres on the batch mean, except after a running or greedy baseline, where it only scales
    (re-centring would replace that baseline with the batch mean)."""
    if algorithm == "ppo":
        rewards = -kl_coef * kl + place_sequence_reward(scores, last_index, mask.shape[1])
        if whiten_rewards:
            rewards = global_whiten(rewards, mask, shift_mean=False)
        advantages, returns = adv.gae(rewards, values * mask, mask, gamma, lam)
        return Advantages(global_whiten(advantages, mask) if whiten_advantages else advantages, returns)
    sequence_rewards = scores - kl_coef * kl.sum(1)
    if algorithm == "grpo":  # groups never straddle processes: prompts are sharded whole
        per_sequence = adv.group_normalized_advantages(sequence_rewards, group_size, scale=scale_rewards)
        return Advantages(per_sequence[:, None] * mask, None)
    if algorithm == "rloo":
        per_sequence = adv.leave_one_out_advantages(sequence_rewards, group_size)
    elif baseline == "greedy":
        greedy_rewards = greedy_scores if greedy_kl is None else greedy_scores - kl_coef * greedy_kl.sum(1)
        per_sequence = adv.greedy_baseline_advantages(sequence_rewards, greedy_rewards)
    elif baseline == "running":
        per_sequence = running.advantages(sequence_rewards, global_mean(sequence_rewards, row_weight))
    else:
        per_sequence = sequence_rewards - global_mean(sequence_rewards, row_weight)
    if whiten_advantages and algorithm == "reinforce" and baseline in ("running", "greedy"):
        per_sequence = global_scale(per_sequence, row_weight)
    elif whiten_advantages:
        per_sequence = global_whiten(per_sequence, row_weight)
    return Advantages(per_sequence[:, None] * mask, None)
