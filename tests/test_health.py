"""Training-health and over-optimisation warnings on constructed traces: one trace per warning, each with
the step its condition began, and a healthy trace that raises none."""

from __future__ import annotations

import math

import pytest

from stages.rl.health import (
    HealthMonitor,
    HealthWarning,
    best_snapshot,
    overoptimization_warning,
    thresholds,
    training_warnings,
)


def healthy_row(step: int) -> dict:
    """A run that learns: reward rising, KL growing slowly, entropy easing off, losses calm."""
    return {
        "step": step,
        "episodes": 64 * step,
        "reward": 0.1 * step + 0.02 * (-1) ** step,
        "kl": 0.3 * step,
        "kl_coef": 0.1,
        "response_length": 14.0 - 0.1 * step,
        "ended_fraction": 0.95,
        "unique_fraction": 0.9 - 0.01 * step,
        "entropy": 1.5 - 0.03 * step,
        "policy_loss": -0.02,
        "value_loss": 0.5 - 0.01 * step,
        "clip_fraction": 0.1,
        "approx_kl": 0.01,
    }


def trace(steps: int = 30, **changes) -> list[dict]:
    """A healthy trace of `steps` rows, with `key=function(step) -> value` replacing a column."""
    rows = [healthy_row(step) for step in range(1, steps + 1)]
    for key, value in changes.items():
        for row in rows:
            row[key] = value(row["step"])
    return rows


def kinds(warnings: list[HealthWarning]) -> list[tuple[str, int]]:
    return [(w.kind, w.step) for w in warnings]


def test_a_healthy_run_raises_no_warning():
    assert training_warnings(trace()) == []
    assert training_warnings([]) == []


def test_kl_running_away_is_reported_from_the_step_it_crossed_the_limit():
    # KL doubles every step from step 10: 0.3·2^(s-9); first >= 20 at step 16 (19.2 at 15, 38.4 at 16).
    history = trace(kl=lambda s: 0.3 * s if s < 10 else 0.3 * 2 ** (s - 9))
    assert kinds(training_warnings(history)) == [("kl_runaway", 16)]
    assert "kl_max=20" in training_warnings(history)[0].message
    # A single spike is not a runaway: the condition must hold `patience` steps in a row.
    spike = trace(kl=lambda s: 50.0 if s == 12 else 0.3 * s)
    assert training_warnings(spike) == []
    # A NaN KL fires at once, at its step.
    assert kinds(training_warnings(trace(kl=lambda s: math.nan if s == 7 else 0.1))) == [("kl_runaway", 7)]


def test_entropy_collapse_is_relative_to_the_starting_entropy():
    # Starts at 2.0 (median of steps 1-3); from step 20 it is 0.1, below 10% of 2.0 = 0.2.
    history = trace(entropy=lambda s: 2.0 if s < 20 else 0.1)
    assert kinds(training_warnings(history)) == [("entropy_collapse", 20)]
    # The same 0.1 is healthy for a policy that started at 0.5 with a looser threshold.
    assert training_warnings(trace(entropy=lambda s: 0.5 if s < 20 else 0.1), entropy_fraction=0.1) == []


def test_responses_collapsing_to_one_string():
    # From step 12 the batch of 64 holds 2 distinct completions (3%): at most 10% for 3 steps.
    history = trace(unique_fraction=lambda s: 0.8 if s < 12 else 2 / 64)
    assert kinds(training_warnings(history)) == [("response_collapse", 12)]


def test_responses_collapsing_to_an_immediate_end():
    # From step 18 the mean response is the stop token alone (length 1).
    history = trace(response_length=lambda s: 12.0 if s < 18 else 1.0)
    warnings = training_warnings(history)
    assert kinds(warnings) == [("empty_responses", 18)]
    assert "immediate end" in warnings[0].message


def test_flat_rewards_for_many_steps():
    # From step 8 the reward is a constant 0.5: the first 10-step window that stays flat starts there.
    history = trace(reward=lambda s: 0.1 * s if s < 8 else 0.5)
    assert kinds(training_warnings(history)) == [("reward_flat", 8)]
    # Nine flat steps are not yet "many": with a 10-step window they raise nothing.
    short = trace(steps=16, reward=lambda s: 0.1 * s if s < 8 else 0.5)
    assert training_warnings(short) == []


def test_value_loss_exploding():
    # Starts at 0.5; from step 15 it is 8.0 = 16x its start, above the 10x threshold.
    history = trace(value_loss=lambda s: 0.5 if s < 15 else 8.0)
    assert kinds(training_warnings(history)) == [("value_loss_explosion", 15)]
    nan = trace(value_loss=lambda s: math.inf if s == 9 else 0.5)
    assert kinds(training_warnings(nan)) == [("value_loss_explosion", 9)]


def test_a_sampler_far_from_the_trainer():
    # KL(sampler || trainer) per token: rounding-level (1e-6) until step 12, then 0.02 (above the 0.01 limit)
    history = trace(**{"mismatch/kl": lambda s: 1e-6 if s < 12 else 0.02})
    assert kinds(training_warnings(history)) == [("sampler_mismatch", 12)]
    assert training_warnings(history, mismatch_kl_max=0.05) == []
    assert training_warnings(trace(**{"mismatch/kl": lambda s: 1e-6})) == []


def test_several_warnings_are_ordered_by_step_and_thresholds_can_be_changed():
    history = trace(
        response_length=lambda s: 12.0 if s < 18 else 1.0,
        unique_fraction=lambda s: 0.8 if s < 12 else 0.02,
    )
    assert kinds(training_warnings(history)) == [("response_collapse", 12), ("empty_responses", 18)]
    assert kinds(training_warnings(history, patience=20)) == []
    with pytest.raises(ValueError, match="unknown health threshold.*kl_maxx.*valid: patience"):
        training_warnings(history, kl_maxx=3.0)
    with pytest.raises(ValueError, match="patience must be a whole number"):
        thresholds(patience=0)


def test_rows_without_a_signal_are_skipped():
    # GRPO logs no value loss; an older history has no unique_fraction or entropy.
    history = [{"step": s, "reward": 0.1 * s, "kl": 0.2 * s} for s in range(1, 20)]
    assert training_warnings(history) == []


def test_monitor_reports_each_warning_once_while_training():
    monitor = HealthMonitor()
    history, reported = [], []
    full = trace(response_length=lambda s: 12.0 if s < 18 else 1.0)
    for row in full:
        history.append(row)
        reported.append([(w.kind, w.step) for w in monitor.check(history)])
    assert sum(reported, []) == [("empty_responses", 18)]
    assert reported[19] == [("empty_responses", 18)]  # known at step 20, after 3 steps in a row


SNAPSHOTS_OVEROPTIMIZED = [
    # proxy keeps rising; gold peaks at step 16 and then falls (Gao et al., 2022)
    {"step": 8, "episodes": 512, "kl": 1.0, "rewards": {"reward_model": 0.4, "gold": 0.30}, "path": None},
    {"step": 16, "episodes": 1024, "kl": 2.5, "rewards": {"reward_model": 0.9, "gold": 0.70}, "path": "s/16"},
    {"step": 24, "episodes": 1536, "kl": 5.0, "rewards": {"reward_model": 1.3, "gold": 0.50}, "path": "s/24"},
    {"step": 32, "episodes": 2048, "kl": 9.0, "rewards": {"reward_model": 1.6, "gold": 0.20}, "path": "s/32"},
]


def test_overoptimization_when_proxy_rises_and_gold_falls():
    warning = overoptimization_warning(SNAPSHOTS_OVEROPTIMIZED)
    assert warning is not None and (warning.kind, warning.step) == ("overoptimization", 16)
    assert "reward_model score kept rising (0.900 -> 1.600 at step 32)" in warning.message
    assert "gold score fell (0.700 -> 0.200)" in warning.message
    assert "best checkpoint by gold is step 16 (saved at s/16)" in warning.message
    assert best_snapshot(SNAPSHOTS_OVEROPTIMIZED)["step"] == 16
    # Order of the list does not matter: snapshots are read by step.
    assert overoptimization_warning(SNAPSHOTS_OVEROPTIMIZED[::-1]) == warning


def test_no_overoptimization_while_gold_keeps_up():
    rising = [
        {"step": s, "kl": s / 4, "rewards": {"reward_model": 0.1 * s, "gold": 0.05 * s}, "path": None}
        for s in range(8, 40, 8)
    ]
    assert overoptimization_warning(rising) is None
    assert best_snapshot(rising)["step"] == 32
    # Gold dips by less than min_gold_drop (0.05): noise, not over-optimisation.
    dip = [dict(s, rewards=dict(s["rewards"])) for s in rising]
    dip[-1]["rewards"]["gold"] = dip[-2]["rewards"]["gold"] - 0.03
    assert overoptimization_warning(dip) is None
    # Both falling is a plain decline, not the proxy being exploited.
    both = [dict(s, rewards=dict(s["rewards"])) for s in SNAPSHOTS_OVEROPTIMIZED]
    both[-1]["rewards"]["reward_model"] = 0.5
    assert overoptimization_warning(both) is None
    assert overoptimization_warning([]) is None and best_snapshot([]) is None
    # Snapshots scored without gold: no judge, no warning.
    assert overoptimization_warning([{"step": 1, "rewards": {"reward_model": 1.0}}] * 3) is None


def test_a_snapshot_far_from_the_reference_is_reported_though_training_looked_calm():
    """The demo at lr 1e-3 once ended so: training KL about 4 on every logged step, and the last update threw
    the policy to KL 102 on the held-out prompts (the step-32 snapshot)."""
    from stages.rl.health import snapshot_kl_warning

    snapshots = [{"step": s, "kl": kl} for s, kl in ((0, 0.0), (8, 4.6), (16, 5.8), (24, 4.0), (32, 102.4))]
    warning = snapshot_kl_warning(snapshots)
    assert (warning.kind, warning.step) == ("snapshot_kl_runaway", 32) and "102 nats" in warning.message
    assert snapshot_kl_warning(snapshots[:4]) is None
    assert snapshot_kl_warning(snapshots, kl_max=200.0) is None
