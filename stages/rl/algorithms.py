"""The one place the RL algorithms differ: how a rollout's rewards become per-token advantages.

  ppo        token rewards (per-token KL penalty + score on the last real token) -> GAE with a value head
  grpo       score normalised within each prompt's group of samples (Shao et al., 2024); KL in the loss
  rloo       score minus the mean of the other samples of the same prompt (Ahmadian et al., 2024)
  reinforce  score minus a baseline: the batch mean, a running mean, or the greedy response (ReMax)
Sequence-level advantages are given to every token of the response, as those papers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from stages.rl import advantages as adv
from stages.rl.masking import place_sequence_reward

ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce")
KL_IN_LOSS_BY_DEFAULT = {"ppo": False, "grpo": True, "rloo": False, "reinforce": False}


@dataclass
class Advantages:
    advantages: Tensor  # [B, T], zero on padding
    returns: Tensor | None  # [B, T] value targets (PPO only)


def compute(
    algorithm: str,
    scores: Tensor,
    kl: Tensor,
    kl_coef: float,
    mask: Tensor,
    last_index: Tensor,
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
) -> Advantages:
    """`kl` is the per-token KL estimate [B, T] (zero where the KL is not a reward penalty), `scores` [B]."""
    if algorithm == "ppo":
        rewards = -kl_coef * kl + place_sequence_reward(scores, last_index, mask.shape[1])
        if whiten_rewards:
            rewards = adv.whiten(rewards, mask, shift_mean=False)
        advantages, returns = adv.gae(rewards, values * mask, mask, gamma, lam)
        return Advantages(adv.whiten(advantages, mask) if whiten_advantages else advantages, returns)
    sequence_rewards = scores - kl_coef * kl.sum(1)
    if algorithm == "grpo":
        per_sequence = adv.group_normalized_advantages(sequence_rewards, group_size, scale=scale_rewards)
        return Advantages(per_sequence[:, None] * mask, None)
    if algorithm == "rloo":
        per_sequence = adv.leave_one_out_advantages(sequence_rewards, group_size)
    elif baseline == "greedy":
        per_sequence = adv.greedy_baseline_advantages(sequence_rewards, greedy_scores)
    elif baseline == "running":
        per_sequence = running.advantages(sequence_rewards)
    else:
        per_sequence = adv.batch_baseline_advantages(sequence_rewards)
    if whiten_advantages:
        per_sequence = adv.whiten(per_sequence)
    return Advantages(per_sequence[:, None] * mask, None)
