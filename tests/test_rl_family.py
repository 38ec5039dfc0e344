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
    for name in algorithms.known_algorithms():
        algorithm = algorithms.get_algorithm(name)
        assert algorithm.advantage in registry.ADVANTAGE_ESTIMATORS
        assert algorithm.policy_loss in registry.POLICY_LOSSES
        assert algorithm.aggregation in registry.AGGREGATIONS


# ---------------------------------------------------------------- DAPO's dynamic sampling
def fake_rollout(rows: int, query_width: int, response_width: int, first_id: int):
    from stages.rl.rollout import Rollout

    ids = torch.arange(first_id, first_id + rows)[:, None]
    return Rollout(
        ids.expand(rows, query_width).clone(),
        torch.ones(rows, query_width, dtype=torch.long),
        ids.expand(rows, response_width).clone(),
        torch.ones(rows, response_width),
        torch.full((rows,), response_width - 1),
        torch.ones(rows, dtype=torch.bool),
    )


def test_dynamic_sampling_replaces_groups_without_signal_with_fresh_ones():
    """Batch of 3 prompts x 2 samples. Round 0 scores (1, 0), (1, 1), (0, 0): groups 2 and 3 have no signal.
    Round 1 scores (0, 0), (1, 0), (0, 1): its groups 2 and 3 fill slots 2 and 3, in order. The merged rollout
    is padded to the widest prompt (4) and response (5); rows keep their own tokens."""
    from stages.rl.collect import PromptStream, collect

    rounds = {
        0: ([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], 2, 3),  # scores, query width, response width
        1: ([0.0, 0.0, 1.0, 0.0, 0.0, 1.0], 4, 5),
    }

    def sample_and_score(prompts, row_weight, round_index):
        scores, query_width, response_width = rounds[round_index]
        rollout = fake_rollout(6, query_width, response_width, first_id=10 * round_index)
        scores = torch.tensor(scores)
        return rollout, scores, {"total": scores}

    stream = PromptStream([f"p{i}" for i in range(6)], seed=0)
    collected = collect(stream, 0, 3, 2, sample_and_score, dynamic_sampling=True, max_rounds=3)
    assert collected.scores.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert collected.rollout.response_ids[:, 0].tolist() == [0, 1, 12, 13, 14, 15]  # round 1's rows 2..5
    assert collected.rollout.query_ids.shape == (6, 4) and collected.rollout.response_ids.shape == (6, 5)
    assert collected.rollout.query_mask[0].tolist() == [0, 0, 1, 1]  # left-padded from width 2
    assert collected.rollout.response_mask[0].tolist() == [1, 1, 1, 0, 0]  # right-padded from width 3
    assert collected.row_weight.tolist() == [1.0] * 6
    assert collected.stats == {"groups_without_signal": 2 / 3, "sampling_rounds": 2.0, "groups_dropped": 0.0}
    assert stream.batches == 2  # one more global batch of prompts drawn


def test_dynamic_sampling_gives_up_after_its_rounds_and_drops_what_is_left():
    from stages.rl.collect import PromptStream, collect

    def sample_and_score(prompts, row_weight, round_index):
        scores = torch.tensor([1.0, 0.0, 1.0, 1.0]) if round_index == 0 else torch.ones(4)
        return fake_rollout(4, 2, 3, 0), scores, {"total": scores}

    stream = PromptStream(["a", "b"], seed=0)
    collected = collect(stream, 0, 2, 2, sample_and_score, dynamic_sampling=True, max_rounds=2)
    assert collected.row_weight.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert collected.stats == {"groups_without_signal": 0.5, "sampling_rounds": 3.0, "groups_dropped": 0.5}


# ---------------------------------------------------------------- a new algorithm is one registration
def test_a_toy_algorithm_registered_from_a_test_trains_with_no_edit_to_the_engine(tiny_run, tmp_path):
    """The sign of the score's difference from its group's mean as the advantage, and PPO's loss."""
    import json

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    @registry.register_advantage("toy_sign_of_centred_score")
    def toy_sign(batch, cfg):
        centred = batch.scores.view(-1, batch.group_size)
        centred = (centred - centred.mean(1, keepdim=True)).sign().reshape(-1)
        return registry.Advantages(batch.per_token(centred))

    registry.register_algorithm(registry.Algorithm("toy", advantage="toy_sign_of_centred_score"))
    block = {
        "kind": "rl",
        "algorithm": "toy",
        "policy": str(tiny_run / "sft"),
        "reward_model": None,
        "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
        "prompts": "demo:reviews/prompts",
        "total_episodes": 128,
        "batch_size": 8,
        "group_size": 4,
        "minibatch_size": 16,
        "ppo_epochs": 2,
        "lr": 2e-3,
        "max_new_tokens": 10,
    }
    out = tmp_path / "toy"
    run_standalone(load_config(None, data={"threads": 2, "stages": {"toy": block}}), "toy", None, out)
    metrics = json.loads((out / "rlhf_stage.json").read_text())["metrics"]
    assert metrics["reward_last"] > metrics["reward_first"] + 0.2
    del registry.ALGORITHMS["toy"], registry.ADVANTAGE_ESTIMATORS["toy_sign_of_centred_score"]


def test_dapo_trains_with_dynamic_sampling_and_overlong_shaping(tiny_run, tmp_path):
    import json

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    block = {
        "kind": "rl",
        "algorithm": "dapo",
        "policy": str(tiny_run / "sft"),
        "reward_model": None,
        "reward_functions": {"reward_models.rules:ends_with_period": 1.0},  # 0 or 1: groups often all equal
        "prompts": "demo:reviews/prompts",
        "total_episodes": 64,
        "batch_size": 8,
        "group_size": 4,
        "minibatch_size": 16,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "mask_truncated": True,
    }
    out = tmp_path / "dapo"
    config = load_config(None, data={"threads": 2, "stages": {"dapo": block}})
    resolved = config.stages["dapo"]
    assert (resolved.clip_range_low, resolved.clip_range_high, resolved.kl_coef) == (0.2, 0.28, 0.0)
    assert resolved.overlong_buffer == 2 and resolved.dynamic_sampling
    run_standalone(config, "dapo", None, out)
    history = json.loads((out / "history.json").read_text())
    assert all(row["sampling_rounds"] >= 1 for row in history)
    assert any(row["groups_without_signal"] > 0 for row in history)
    assert all(0 <= row["groups_dropped"] <= row["groups_without_signal"] for row in history)
