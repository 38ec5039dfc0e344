"""The registered RL family: each new advantage estimator, policy loss and loss aggregation against numbers
worked by hand (the arithmetic is in the test), and against TRL's formula on the same random tensors where
TRL implements the same thing (trl 1.16.0, `trl/trainer/grpo_trainer.py`, `_compute_loss`, transcribed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from stages.rl import algorithms, registry
from stages.rl.algorithms import ScoredBatch
from stages.rl.losses import aggregate, clipped_importance_weight, ppo_clip, sequence_clip
from stages.rl.rewards import overlong_penalty

CFG = SimpleNamespace(gamma=1.0, lam=0.95, scale_rewards=True, whiten_advantages=True, whiten_rewards=False)


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    assert torch.allclose(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol), actual


# ---------------------------------------------------------------- loss aggregation
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), float("inf")]])  # padding holds garbage
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (1 + 2 + 3 + 4) / 4),  # every token weighs 1/4
        ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + 4 / 1) / 2),  # (2 + 4) / 2 = 3
        ("seq-mean-token-sum-norm", (1 + 2 + 3 + 4) / (2 * 5)),  # 10 / (G = 2 rows x L_max = 5)
    ],
)
def test_each_aggregation_and_its_parts_over_processes(mode, expected):
    whole = aggregate(PER_TOKEN, MASK, mode, global_tokens=4, global_rows=2, max_length=5)
    assert math.isclose(float(whole), expected, rel_tol=1e-6)
    # two processes holding one row each: their parts, taken over the global counts, add up to the whole
    parts = [aggregate(PER_TOKEN[i : i + 1], MASK[i : i + 1], mode, 4, 2, 5) for i in range(2)]
    assert math.isclose(float(sum(parts)), expected, rel_tol=1e-6)


# ---------------------------------------------------------------- policy losses
def test_ppo_clip_with_a_higher_upper_clip():
    """Ratios 1.5, 0.5, 1.25 with A = +1, -1, +1; clip-low 0.2, clip-high 0.28 (DAPO):
    1.5:  max(-1.5, -clip(1.5 -> 1.28)) = -1.28 (clipped);  0.5: max(0.5, clip(0.5 -> 0.8) = 0.8) = 0.8
    (clipped); 1.25: under 1.28, so -1.25 (not clipped). PPO's symmetric 0.2 would clip it to -1.2."""
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.25]]))
    advantages = torch.tensor([[1.0, -1.0, 1.0]])
    terms = ppo_clip(new, old, advantages, torch.ones(1, 3), 0.2, 0.28)
    close(terms.per_token, [[-1.28, 0.8, -1.25]])
    assert terms.clipped.tolist() == [[True, True, False]]
    symmetric = ppo_clip(new, old, advantages, torch.ones(1, 3), 0.2, 0.2)
    close(symmetric.per_token[0, 2:], [-1.2])


def test_gspo_clips_one_length_normalised_ratio_per_sequence():
    """Sequence 1: log-ratios ln 2, 0 -> s = exp(ln 2 / 2) = sqrt 2 = 1.4142 > 1.2, A = +1: l = -1.2 (clipped,
    no gradient). Sequence 2: one real token, ratio 0.9, A = -2: l = max(1.8, -2 * clip(0.9) = 1.8) = 1.8;
    d l / d logprob = -A * s / |y| = 2 * 0.9 / 1 = 1.8. Sequence mean: (-1.2 + 1.8) / 2 = 0.3."""
    old = torch.zeros(2, 2)
    new = torch.tensor([[math.log(2.0), 0.0], [math.log(0.9), float("nan")]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    terms = sequence_clip(new, old, advantages, mask, 0.2, 0.2)
    close(terms.per_token * mask, [[-1.2, -1.2], [1.8, 0.0]])
    loss = aggregate(terms.per_token, mask, "seq-mean-token-mean", 3, 2, 2)
    assert math.isclose(float(loss.detach()), 0.3, rel_tol=1e-5)
    loss.backward()
    close(new.grad, [[0.0, 0.0], [1.8 / 2, 0.0]])  # the 1/2 is the sequence mean over 2 sequences


def test_cispo_caps_the_importance_weight_and_keeps_every_token():
    """Ratios 1.5 and 7 with A = 1, logprobs -1 and -2, cap 1 + 4 = 5: w = 1.5, 5 (stop-gradient);
    l = -w * A * logprob = 1.5, 10; d l / d logprob = -w * A = -1.5, -5 (PPO-clip would give 0 for 7)."""
    new = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = new.detach() - torch.log(torch.tensor([[1.5, 7.0]]))
    terms = clipped_importance_weight(new, old, torch.ones(1, 2), torch.ones(1, 2), 0.2, 4.0)
    close(terms.per_token, [[1.5, 10.0]])
    assert terms.clipped.tolist() == [[False, True]]
    terms.per_token.sum().backward()
    close(new.grad, [[-1.5, -5.0]])


def trl_1_16_loss(loss_type, logps, old_logps, advantages, mask, eps_low, eps_high, level, max_len):
    """TRL 1.16.0 GRPOTrainer._compute_loss, transcribed (beta = 0, no vLLM correction, no masks)."""
    log_ratio = logps - old_logps
    if level == "token":
        log_weights = log_ratio
    else:
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_weights)
    advantages = advantages.unsqueeze(1)
    if loss_type == "cispo":
        per_token_loss = -torch.clamp(coef_1, max=eps_high).detach() * advantages * logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_len)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)  # dapo, cispo (one process)


@pytest.mark.parametrize(
    "name, loss_type, level, aggregation, eps_low, eps_high",
    [
        ("dapo", "dapo", "token", "token-mean", 0.2, 0.28),
        ("dr_grpo", "dr_grpo", "token", "seq-mean-token-sum-norm", 0.2, 0.2),
        ("gspo", "grpo", "sequence", "seq-mean-token-mean", 3e-4, 4e-4),
        ("cispo", "cispo", "token", "token-mean", None, 5.0),
    ],
)
def test_losses_equal_trls_formula_on_random_tensors(name, loss_type, level, aggregation, eps_low, eps_high):
    """Values and gradients on 5 seeds, right-padded rows of different lengths (TRL's epsilon_high for CISPO
    is the cap itself, 5.0; ours is 1 + clip_range_high = 1 + 4)."""
    loss_fn = registry.POLICY_LOSSES[registry.ALGORITHMS[name].policy_loss]
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.tensor([7, 1, 4, 6])
        mask = (torch.arange(7)[None] < lengths[:, None]).float()
        old = -torch.rand(4, 7, generator=generator) * 3
        new = (old + 0.3 * torch.randn(4, 7, generator=generator)).requires_grad_(True)
        advantages = torch.randn(4, generator=generator)
        ours_low = 0.0 if eps_low is None else eps_low
        ours_high = eps_high - 1.0 if name == "cispo" else eps_high
        terms = loss_fn(new, old, advantages[:, None].expand(4, 7), mask, ours_low, ours_high)
        ours = aggregate(terms.per_token, mask, aggregation, float(mask.sum()), 4.0, 7)
        (ours_grad,) = torch.autograd.grad(ours, new)
        theirs = trl_1_16_loss(loss_type, new, old, advantages, mask, ours_low, eps_high, level, 7)
        (theirs_grad,) = torch.autograd.grad(theirs, new)
        assert torch.allclose(ours, theirs, atol=1e-6), (seed, ours, theirs)
        assert torch.allclose(ours_grad * mask, theirs_grad * mask, atol=1e-6), seed


# ---------------------------------------------------------------- advantage estimators
def scored(scores, mask, kl=None, kl_coef=0.0, group_size=1):
    mask = torch.tensor(mask)
    return ScoredBatch(
        torch.tensor(scores),
        torch.zeros_like(mask) if kl is None else torch.tensor(kl),
        kl_coef,
        mask,
        mask.sum(1).long() - 1,
        torch.ones(len(scores)),
        group_size,
    )


def test_dr_grpo_centres_on_the_group_mean_without_the_std():
    """Groups (1, 0, 0) and (1, 1, 1): means 1/3 and 1 -> A = 2/3, -1/3, -1/3, 0, 0, 0 (GRPO would divide the
    first group by its std, 0.577, and leave the all-equal group at 0 too)."""
    batch = scored([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [[1.0, 1.0]] * 6, group_size=3)
    close(algorithms.group_centered(batch, CFG).advantages[:, 0], [2 / 3, -1 / 3, -1 / 3, 0, 0, 0])


def test_reinforce_pp_returns_to_go_normalised_over_every_token():
    """Scores 1, 0; per-token KL (0.1, 0.2, 0.3) and (0.4, 0.5); beta 1. Token rewards: -0.1, -0.2, -0.3 + 1;
    -0.4, -0.5 + 0. Rewards-to-go: 0.4, 0.5, 0.7; -0.9, -0.5. Mean 0.2 / 5 = 0.04; squared deviations
    0.1296 + 0.2116 + 0.4356 + 0.8836 + 0.2916 = 1.952, unbiased variance 1.952 / 4 = 0.488."""
    batch = scored([1.0, 0.0], [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], [[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]], 1.0)
    std = math.sqrt(0.488)
    expected = [[(r - 0.04) / std for r in (0.4, 0.5, 0.7)], [(-0.9 - 0.04) / std, (-0.5 - 0.04) / std, 0.0]]
    close(algorithms.global_normalized_returns(batch, CFG).advantages, expected)


def test_reinforce_pp_baseline_centres_each_group_then_normalises_the_batch():
    """One group, scores 1 and 0 (mean 0.5), no KL: 0.5 on each of 3 tokens, -0.5 on each of 2. Mean 0.1;
    squared deviations 3 * 0.16 + 2 * 0.36 = 1.2, variance 1.2 / 4 = 0.3."""
    batch = scored([1.0, 0.0], [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], group_size=2)
    std = math.sqrt(0.3)
    expected = [[0.4 / std] * 3, [-0.6 / std, -0.6 / std, 0.0]]
    close(algorithms.group_centered_global_normalized(batch, CFG).advantages, expected)


def test_dapo_overlong_penalty_grows_over_the_buffer():
    """L_max 20, buffer 5: no penalty up to 15 tokens, then (|y| - 15) / 5: 16 -> 0.2, 20 -> 1 (times 0.5)."""
    close(overlong_penalty(torch.tensor([10, 15, 16, 20]), 20, 5, 0.5), [0.0, 0.0, 0.1, 0.5])


def test_every_algorithm_names_registered_parts():
    for name in registry.known_algorithms():
        algorithm = registry.get_algorithm(name)
        assert algorithm.advantage in registry.ADVANTAGE_ESTIMATORS
        assert algorithm.policy_loss in registry.POLICY_LOSSES
        assert algorithm.aggregation in registry.AGGREGATIONS
