"""Advantages, KL estimators and controllers, and PPO losses of the RL engine, checked against numbers worked
by hand (the arithmetic is in the comments; ln 2 = 0.693147, (ln 2)^2 = 0.480453).
"""

from __future__ import annotations

import math

import pytest
import torch

from stages.rl.advantages import (
    RunningMeanBaseline,
    batch_baseline_advantages,
    discounted_returns,
    gae,
    greedy_baseline_advantages,
    group_normalized_advantages,
    leave_one_out_advantages,
    whiten,
)
from stages.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate
from stages.rl.losses import (
    PolicyLossOutput,
    ValueLossOutput,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    kl_loss_term,
)

LN2 = math.log(2.0)
INF = float("inf")


def _close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---- whitening -------------------------------------------------------------------------------------------


def test_whiten_with_mask() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # kept 1, 2, 3: mean 2, unbiased var (1 + 0 + 1)/2 = 1 -> (x - 2)/1 = -1, 0, 1; masked slot -> 0
    _close(whiten(x, mask), [-1.0, 0.0, 1.0, 0.0])
    # shift_mean=False adds the mean 2 back: 1, 2, 3; masked slot still 0
    _close(whiten(x, mask, shift_mean=False), [1.0, 2.0, 3.0, 0.0])


def test_whiten_without_mask() -> None:
    # mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25)/3 = 5/3, std 1.290994
    # 1.5/1.290994 = 1.161895, 0.5/1.290994 = 0.387298
    _close(whiten(torch.tensor([1.0, 2.0, 3.0, 4.0])), [-1.161895, -0.387298, 0.387298, 1.161895])


# ---- GAE and reward-to-go --------------------------------------------------------------------------------


def test_gae_by_hand_with_a_mask_ending_early() -> None:
    rewards = torch.tensor([[0.0, 1.0, 5.0], [1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.2, INF], [0.5, 1.0, 1.5]])  # inf past the mask must be ignored
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0 (gamma*lam = 0.72), t=1 is terminal (m_2 = 0): delta_1 = 1 - 0.2 = 0.8, A_1 = 0.8
    #   t=0: delta_0 = 0 + 0.9*0.2 - 0.5 = -0.32; A_0 = -0.32 + 0.72*0.8 = 0.256
    #   returns = A + V = 0.756, 1.0, (masked) 0
    # row 1, t=2: delta = 2 - 1.5 = 0.5, A_2 = 0.5
    #   t=1: delta = 0 + 0.9*1.5 - 1 = 0.35; A_1 = 0.35 + 0.72*0.5 = 0.71
    #   t=0: delta = 1 + 0.9*1 - 0.5 = 1.4;  A_0 = 1.4 + 0.72*0.71 = 1.9112
    #   returns = 2.4112, 1.71, 2.0
    _close(advantages, [[0.256, 0.8, 0.0], [1.9112, 0.71, 0.5]])
    _close(returns, [[0.756, 1.0, 0.0], [2.4112, 1.71, 2.0]])


def test_gae_with_gamma_lambda_one_returns_reward_to_go() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    _, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # undiscounted Monte-Carlo return: 1+0+2 = 3, 0+2 = 2, 2
    _close(returns, [[3.0, 2.0, 2.0]])


def test_discounted_returns() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # gamma 0.5: G_2 = 2; G_1 = 0 + 0.5*2 = 1; G_0 = 1 + 0.5*1 = 1.5; the masked 9 is ignored -> 0
    _close(discounted_returns(rewards, mask, gamma=0.5), [[1.5, 1.0, 2.0, 0.0]])


# ---- group and REINFORCE baselines -----------------------------------------------------------------------


def test_group_normalized_advantages_scale_and_no_scale() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    # group 1: mean 2, unbiased std sqrt((1 + 0 + 1)/2) = 1 -> (s - 2)/(1 + 1e-4) = -0.999900, 0, 0.999900
    # group 2: all equal -> centred 0, std 0 -> 0/(0 + 1e-4) = 0
    _close(group_normalized_advantages(scores, 3), [-0.999900, 0.0, 0.999900, 0.0, 0.0, 0.0])
    _close(group_normalized_advantages(scores, 3, scale=False), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def test_group_normalized_advantages_non_unit_std() -> None:
    # mean 1, deviations -1, -1, 2; unbiased var (1 + 1 + 4)/2 = 3, std 1.732051
    # -1/(1.732051 + 1e-4) = -0.577317; 2/1.732151 = 1.154634
    _close(group_normalized_advantages(torch.tensor([0.0, 0.0, 3.0]), 3), [-0.577317, -0.577317, 1.154634])


def test_group_normalized_advantages_rejects_bad_group_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        group_normalized_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_normalized_advantages(torch.tensor([1.0, 2.0]), 1)


def test_leave_one_out_advantages() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    # group 1: 1 - (2+3)/2 = -1.5; 2 - (1+3)/2 = 0; 3 - (1+2)/2 = 1.5;  group 2: 4 - 4 = 0 each
    _close(leave_one_out_advantages(scores, 3), [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_size >= 2"):
        leave_one_out_advantages(scores, 1)


def test_batch_and_greedy_baselines() -> None:
    # mean of 1, 2, 6 is 3 -> -2, -1, 3
    _close(batch_baseline_advantages(torch.tensor([1.0, 2.0, 6.0])), [-2.0, -1.0, 3.0])
    # ReMax: 1 - 0.25 = 0.75; 0.5 - 0.5 = 0
    _close(greedy_baseline_advantages(torch.tensor([1.0, 0.5]), torch.tensor([0.25, 0.5])), [0.75, 0.0])


def test_running_mean_baseline_over_two_calls_and_state_roundtrip() -> None:
    baseline = RunningMeanBaseline(momentum=0.9)
    # call 1: no history, baseline = batch mean (1+3)/2 = 2 -> -1, 1; stored baseline 2
    _close(baseline.advantages(torch.tensor([1.0, 3.0])), [-1.0, 1.0])
    # call 2: uses the old baseline 2 -> 4-2, 6-2 = 2, 4; then 0.9*2 + 0.1*5 = 2.3
    _close(baseline.advantages(torch.tensor([4.0, 6.0])), [2.0, 4.0])
    assert baseline.value == pytest.approx(2.3)
    restored = RunningMeanBaseline()
    restored.load_state_dict(baseline.state_dict())
    # the restored baseline continues from 2.3: 3.3 - 2.3 = 1
    _close(restored.advantages(torch.tensor([3.3])), [1.0])


# ---- KL --------------------------------------------------------------------------------------------------


def test_kl_estimators_at_log_two() -> None:
    # log-ratios ln 2, -ln 2, 0 (logprobs ln 0.5 vs ref ln 0.25, and the reverse, and equal)
    logprobs = torch.tensor([math.log(0.5), math.log(0.25), -1.0])
    ref_logprobs = torch.tensor([math.log(0.25), math.log(0.5), -1.0])
    _close(kl_estimate(logprobs, ref_logprobs, "k1"), [0.693147, -0.693147, 0.0])
    # k2 = 0.5 * 0.480453 = 0.240227 for both signs
    _close(kl_estimate(logprobs, ref_logprobs, "k2"), [0.240227, 0.240227, 0.0])
    # k3: e^{-ln2} - 1 + ln2 = 0.5 - 1 + 0.693147 = 0.193147;  e^{ln2} - 1 - ln2 = 2 - 1 - 0.693147 = 0.306853
    _close(kl_estimate(logprobs, ref_logprobs, "k3"), [0.193147, 0.306853, 0.0])


def test_kl_estimate_unknown_kind_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_fixed_kl_controller_does_not_move() -> None:
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=256)
    assert controller.value == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_adaptive_kl_controller_one_step_each_way() -> None:
    up = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9 vs target 6: 9/6 - 1 = 0.5, clipped to 0.2; 0.1 * (1 + 0.2*256/10000) = 0.1 * 1.00512 = 0.100512
    up.update(current_kl=9.0, n_steps=256)
    assert up.value == pytest.approx(0.100512)
    down = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 5.4: 5.4/6 - 1 = -0.1 (inside the clip); 0.1 * (1 - 0.1*256/10000) = 0.1 * 0.99744 = 0.099744
    down.update(current_kl=5.4, n_steps=256)
    assert down.value == pytest.approx(0.099744)
    restored = AdaptiveKLController(init_kl_coef=1.0, target=6.0, horizon=10000)
    restored.load_state_dict(down.state_dict())
    assert restored.value == pytest.approx(0.099744)


# ---- policy loss -----------------------------------------------------------------------------------------

# Three real tokens with advantage +1 and ratios 2, 1, 0.5 (log-ratios ln 2, 0, -ln 2), clip range 0.2,
# plus a padded fourth token whose log-prob is garbage (+inf ratio) that must not leak.
OLD = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
NEW = torch.tensor([[-1.0 + LN2, -1.0, -1.0 - LN2, 50.0]])
POLICY_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])


def test_clipped_policy_loss_values_and_clip_fraction() -> None:
    out = clipped_policy_loss(NEW, OLD, torch.ones(1, 4), POLICY_MASK, clip_range=0.2)
    assert isinstance(out, PolicyLossOutput)
    # ratio 2:   max(-2, -1.2) = -1.2  (clipped term is the max -> clipped)
    # ratio 1:   max(-1, -1)   = -1    (tie -> not clipped)
    # ratio 0.5: max(-0.5, -0.8) = -0.5 (unclipped wins: no clipping below the range for A > 0)
    # loss = (-1.2 - 1 - 0.5)/3 = -0.9; clip fraction 1/3
    _close(out.loss, -0.9)
    _close(out.clip_fraction, 1.0 / 3.0)
    # approx_kl = mean of 0.5*(ln2)^2, 0, 0.5*(ln2)^2 = 0.480453/3 = 0.160151
    _close(out.approx_kl, 0.160151)


def test_clipped_policy_loss_gradient_is_zero_where_clipped() -> None:
    logprobs = NEW.clone().requires_grad_(True)
    clipped_policy_loss(logprobs, OLD, torch.ones(1, 4), POLICY_MASK, clip_range=0.2).loss.backward()
    # d/dlogp of -A*ratio/3 is -ratio/3: token 1 (ratio 1) -> -1/3, token 2 (ratio 0.5) -> -1/6;
    # token 0 is clipped (constant -1.2) -> 0; the padded token -> 0 (and not NaN)
    _close(logprobs.grad, [[0.0, -1.0 / 3.0, -1.0 / 6.0, 0.0]])


def test_clipped_policy_loss_negative_advantage_clips_below_the_range() -> None:
    logprobs = torch.tensor([[-1.0 - LN2, -1.0 + LN2]], requires_grad=True)
    out = clipped_policy_loss(logprobs, OLD[:, :2], -torch.ones(1, 2), torch.ones(1, 2), clip_range=0.2)
    # A = -1, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped); ratio 2: max(2, 1.2) = 2 (unclipped)
    # loss = (0.8 + 2)/2 = 1.4; clip fraction 1/2; gradient 0 and ratio/2 = 1
    _close(out.loss, 1.4)
    _close(out.clip_fraction, 0.5)
    out.loss.backward()
    _close(logprobs.grad, [[0.0, 1.0]])


# ---- value loss, KL term, entropy ------------------------------------------------------------------------


def test_clipped_value_loss() -> None:
    values = torch.tensor([[1.0, 1.0, 0.4, INF]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[0.0, 2.0, 0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert isinstance(out, ValueLossOutput)
    # clip(V) = clip(V, V_old - 0.2, V_old + 0.2): 0.7, 0.7, 0.4
    # token 0: max((1-0)^2, (0.7-0)^2) = max(1, 0.49) = 1      (unclipped)
    # token 1: max((1-2)^2, (0.7-2)^2) = max(1, 1.69) = 1.69   (clipped)
    # token 2: max(0, 0) = 0                                    (tie -> not clipped)
    # loss = 0.5 * (1 + 1.69 + 0)/3 = 0.448333; clip fraction 1/3
    _close(out.loss, 0.448333)
    _close(out.clip_fraction, 1.0 / 3.0)
    out.loss.backward()
    # token 0: d/dV 0.5*(V-R)^2/3 = (1-0)/3 = 0.333333; token 1 clipped -> 0; token 2: (0.4-0.4)/3 = 0
    _close(values.grad, [[1.0 / 3.0, 0.0, 0.0, 0.0]])


def test_kl_loss_term_k3_and_k1_with_gradient() -> None:
    logprobs = torch.tensor([[math.log(0.5), -1.0, INF]], requires_grad=True)
    ref_logprobs = torch.tensor([[math.log(0.25), -1.0, -INF]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = kl_loss_term(logprobs, ref_logprobs, mask)
    # k3 at ln 2 is 0.193147, at 0 is 0 -> mean over 2 tokens 0.096574
    _close(loss, 0.096574)
    loss.backward()
    # d k3/d logp = 1 - e^{-r} = 1 - 0.5 = 0.5 at r = ln 2, 0 at r = 0; divided by 2 tokens
    _close(logprobs.grad, [[0.25, 0.0, 0.0]])
    # k1: (0.693147 + 0)/2 = 0.346574
    _close(kl_loss_term(logprobs.detach(), ref_logprobs, mask, kind="k1"), 0.346574)


def test_entropy_from_logits() -> None:
    logits = torch.tensor(
        [
            [
                [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4 = 1.386294
                [0.0, math.log(3.0), -INF, -INF],  # p = 1/4, 3/4: ln4 - 0.75 ln3 = 0.562335
                [1000.0, 1000.0, -INF, 0.0],  # overflow-safe: p ~ 1/2, 1/2, 0, ~0 -> ln 2 = 0.693147
            ]
        ],
        requires_grad=True,
    )
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (1, 3)
    _close(entropy, [[1.386294, 0.562335, 0.693147]])
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
