"""The RL family, registered by name: how each algorithm turns a scored rollout into per-token advantages,
and which policy loss and loss aggregation it trains with.

  ppo                    token rewards (per-token KL penalty + score on the last real token) -> GAE, whitened
  grpo                   score normalised within each prompt's group (Shao et al., 2024); KL in the loss
  dapo                   GRPO's advantages, clip-higher, dynamic sampling, overlong shaping (Yu et al., 2025)
  dr_grpo                group-centred score, no std, constant loss normaliser (Liu et al., 2025)
  gspo                   GRPO's advantages, sequence-level ratio and clipping (Zheng et al., 2025)
  cispo                  GRPO's advantages, clipped importance weight on every token (MiniMax, 2025)
  rloo                   score minus the mean of the other samples of the prompt (Ahmadian et al., 2024)
  reinforce              score minus a baseline: batch mean, running mean or greedy response (ReMax)
  reinforce_pp           REINFORCE++: per-token KL in the reward, returns normalised over the batch (Hu, 2025)
  reinforce_pp_baseline  REINFORCE++-baseline: group-mean baseline, then normalised over the batch
Sequence-level advantages are given to every token of the response, as those papers do. Statistics over the
batch (whitening, batch means) are taken over every process's rows: `reduce` sums over processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline import distributed
from pipeline.config_schema import suggest
from pipeline.errors import ConfigError
from stages.rl import advantages as adv
from stages.rl.losses import clipped_importance_weight, ppo_clip, sequence_clip  # noqa: F401 (registers)
from stages.rl.masking import place_sequence_reward
from stages.rl.registry import (
    ADVANTAGE_ESTIMATORS,
    ALGORITHMS,
    POLICY_LOSSES,
    Advantages,
    Algorithm,
    PolicyLossTerms,
    register_advantage,
    register_algorithm,
)


@dataclass
class ScoredBatch:
    """What an advantage estimator reads: one rollout batch, scored. Placeholder rows (a process without
    prompts) have row_weight 0 and an all-zero mask, so they contribute to nothing."""

    scores: Tensor  # [B] sequence scores, penalties included
    kl: Tensor  # [B, T] per-token KL estimate to the reference, 0 on padding
    kl_coef: float  # weight of `kl` as a reward penalty (0 when the KL is a loss term)
    mask: Tensor  # [B, T]
    last_index: Tensor  # [B] index of each response's real last token
    row_weight: Tensor  # [B]
    group_size: int = 1  # consecutive rows are samples of one prompt; groups never straddle processes
    values: Tensor | None = None  # [B, T] V(s_t) of a value model
    greedy_scores: Tensor | None = None  # [B] ReMax baseline: the greedy response's score
    greedy_kl: Tensor | None = None  # [B, T'] and its per-token KL
    running: adv.RunningMeanBaseline | None = None  # REINFORCE's running-mean state

    def sequence_rewards(self) -> Tensor:
        """score - kl_coef * sum_t KL_t: the KL penalty of the whole response."""
        return self.scores - self.kl_coef * self.kl.sum(1)

    def token_rewards(self, scores: Tensor | None = None) -> Tensor:
        """-kl_coef * KL_t on every token, plus the score (or `scores`) on the last real token."""
        scores = self.scores if scores is None else scores
        return -self.kl_coef * self.kl + place_sequence_reward(scores, self.last_index, self.mask.shape[1])

    def per_token(self, per_sequence: Tensor) -> Tensor:
        return per_sequence[:, None] * self.mask


def global_mean(x: Tensor, weight: Tensor) -> float:
    """Weighted mean over every process's rows (weight 0 marks a placeholder row)."""
    total = distributed.all_sum(torch.stack([(x * weight).sum(), weight.sum()]).double())
    return float(total[0] / total[1].clamp(min=1))


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    return adv.whiten(x, mask, shift_mean=shift_mean, reduce=distributed.all_sum)


# ---------------------------------------------------------------- advantage estimators
@register_advantage("gae")
def gae_advantages(batch: ScoredBatch, cfg) -> Advantages:
    """PPO (Ziegler et al., 2019): r_t = -beta * KL_t (+ score at the last token); A = GAE(gamma, lambda)
    with the value head; value targets = A + V; A whitened over the batch."""
    rewards = batch.token_rewards()
    if cfg.whiten_rewards:
        rewards = whiten(rewards, batch.mask, shift_mean=False)
    advantages, returns = adv.gae(rewards, batch.values * batch.mask, batch.mask, cfg.gamma, cfg.lam)
    return Advantages(whiten(advantages, batch.mask) if cfg.whiten_advantages else advantages, returns)


@register_advantage("group_normalized")
def group_normalized(batch: ScoredBatch, cfg) -> Advantages:
    """GRPO: A_i = (R_i - mean(R_group)) / (std(R_group) + 1e-4), std unbiased; no std with
    `scale_rewards: false`. R = score - beta * sum KL (0 when the KL is in the loss)."""
    per_sequence = adv.group_normalized_advantages(
        batch.sequence_rewards(), batch.group_size, scale=cfg.scale_rewards
    )
    return Advantages(batch.per_token(per_sequence))


@register_advantage("group_centered")
def group_centered(batch: ScoredBatch, cfg) -> Advantages:
    """Dr. GRPO: A_i = R_i - mean(R_group), with no division by the group's std (which up-weights groups
    that are nearly all right or all wrong: a question-difficulty bias)."""
    per_sequence = adv.group_normalized_advantages(batch.sequence_rewards(), batch.group_size, scale=False)
    return Advantages(batch.per_token(per_sequence))


@register_advantage("leave_one_out")
def leave_one_out(batch: ScoredBatch, cfg) -> Advantages:
    """RLOO: A_i = R_i - (sum_{j != i} R_j) / (k - 1) over the k samples of the prompt; whitened."""
    per_sequence = adv.leave_one_out_advantages(batch.sequence_rewards(), batch.group_size)
    if cfg.whiten_advantages:
        per_sequence = whiten(per_sequence, batch.row_weight)
    return Advantages(batch.per_token(per_sequence))


@register_advantage("reinforce_baselines")
def reinforce_baselines(batch: ScoredBatch, cfg) -> Advantages:
    """REINFORCE: A_i = R_i - b with b the batch mean, a running mean (b <- m * b + (1 - m) * batch mean,
    scored against the b from before the batch) or R(greedy response) (ReMax, Li et al., 2023). Whitening
    re-centres the batch baseline, and only scales the other two (re-centring would replace them)."""
    rewards = batch.sequence_rewards()
    if cfg.baseline == "greedy":
        greedy = batch.greedy_scores
        if batch.greedy_kl is not None:
            greedy = greedy - batch.kl_coef * batch.greedy_kl.sum(1)
        per_sequence = adv.greedy_baseline_advantages(rewards, greedy)
    elif cfg.baseline == "running":
        per_sequence = batch.running.advantages(rewards, global_mean(rewards, batch.row_weight))
    else:
        per_sequence = rewards - global_mean(rewards, batch.row_weight)
    if cfg.whiten_advantages and cfg.baseline in ("running", "greedy"):
        per_sequence = adv.scale(per_sequence, batch.row_weight, reduce=distributed.all_sum)
    elif cfg.whiten_advantages:
        per_sequence = whiten(per_sequence, batch.row_weight)
    return Advantages(batch.per_token(per_sequence))


@register_advantage("global_normalized_returns")
def global_normalized_returns(batch: ScoredBatch, cfg) -> Advantages:
    """REINFORCE++ (Hu, 2025): A_t = R - beta * sum_{i >= t} KL_i (the reward-to-go of the token rewards,
    discounted by gamma), then normalised over every token of the global batch: (A - mean) / std."""
    returns = adv.discounted_returns(batch.token_rewards(), batch.mask, cfg.gamma)
    return Advantages(whiten(returns, batch.mask) if cfg.whiten_advantages else returns)


@register_advantage("group_centered_global_normalized")
def group_centered_global_normalized(batch: ScoredBatch, cfg) -> Advantages:
    """REINFORCE++-baseline: the score minus its group's mean score, then per-token KL penalty, reward-to-go
    and normalisation over the global batch as REINFORCE++ (the group mean removes the prompt's difficulty,
    the global std keeps the scale stable where a group's own std would be ~0)."""
    centered = adv.group_normalized_advantages(batch.scores, batch.group_size, scale=False)
    returns = adv.discounted_returns(batch.token_rewards(centered), batch.mask, cfg.gamma)
    return Advantages(whiten(returns, batch.mask) if cfg.whiten_advantages else returns)


def compute(algorithm: Algorithm, batch: ScoredBatch, cfg) -> Advantages:
    """The algorithm's registered estimator applied to `batch`."""
    return ADVANTAGE_ESTIMATORS[algorithm.advantage](batch, cfg)


# ---------------------------------------------------------------- algorithms
register_algorithm(Algorithm("ppo", advantage="gae", value_model=True))
register_algorithm(Algorithm("grpo", advantage="group_normalized", kl_in_loss=True, needs_groups=True))
register_algorithm(
    Algorithm(
        "dapo",
        advantage="group_normalized",
        kl_coef=0.0,  # DAPO drops the KL term (on verifiable tasks the policy may move far from SFT)
        needs_groups=True,
        clip_range_low=0.2,
        clip_range_high=0.28,  # clip-higher: unlikely tokens may rise (against entropy collapse)
        dynamic_sampling=True,
        overlong_shaping=True,
    )
)
register_algorithm(
    Algorithm(
        "dr_grpo",
        advantage="group_centered",
        aggregation="seq-mean-token-sum-norm",
        kl_in_loss=True,
        kl_coef=0.0,  # Dr. GRPO trains without a KL term
        needs_groups=True,
    )
)
register_algorithm(
    Algorithm(
        "gspo",
        advantage="group_normalized",
        policy_loss="sequence_clip",
        aggregation="seq-mean-token-mean",
        kl_in_loss=True,
        kl_coef=0.0,
        needs_groups=True,
        clip_range_low=3e-4,  # the paper's ranges: a length-normalised sequence ratio stays near 1
        clip_range_high=4e-4,
    )
)
register_algorithm(
    Algorithm(
        "cispo",
        advantage="group_normalized",
        policy_loss="clipped_importance_weight",
        kl_in_loss=True,
        kl_coef=0.0,
        needs_groups=True,
        clip_range_high=4.0,  # the importance weight is capped at 1 + 4 = 5 (ScaleRL's epsilon_max = 5)
    )
)
register_algorithm(Algorithm("rloo", advantage="leave_one_out", needs_groups=True))
register_algorithm(Algorithm("reinforce", advantage="reinforce_baselines"))
register_algorithm(Algorithm("reinforce_pp", advantage="global_normalized_returns"))
register_algorithm(
    Algorithm(
        "reinforce_pp_baseline",
        advantage="group_centered_global_normalized",
        kl_in_loss=True,
        needs_groups=True,
    )
)


# ---------------------------------------------------------------- lookup (the built-ins above registered)


def known_algorithms() -> list[str]:
    """Every registered algorithm: the built-in ones (this module) and any registered since."""
    return list(ALGORITHMS)


def get_algorithm(name: str) -> Algorithm:
    known = known_algorithms()
    if name not in ALGORITHMS:
        raise ConfigError(
            f"Unknown RL algorithm '{name}'.{suggest(name, known)} Known algorithms: {', '.join(known)}."
        )
    return ALGORITHMS[name]


def get_policy_loss(name: str) -> Callable[..., PolicyLossTerms]:
    if name not in POLICY_LOSSES:
        raise ConfigError(
            f"Unknown policy loss '{name}'.{suggest(name, list(POLICY_LOSSES))} "
            f"Known policy losses: {', '.join(POLICY_LOSSES)}."
        )
    return POLICY_LOSSES[name]
