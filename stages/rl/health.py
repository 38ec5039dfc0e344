"""Training-health and over-optimisation warnings read off an RL run's history and snapshots.

Pure functions of the logged rows (`history.json`) and snapshot scores (`snapshots.json`): the RL stage
calls them while and after it trains, the evaluation report calls them again. Each warning carries the
step at which its condition began. Thresholds and their defaults: `Thresholds` and docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class HealthWarning:
    kind: str  # kl_runaway, entropy_collapse, response_collapse, empty_responses, reward_flat, ...
    step: int  # the RL step at which the condition began
    message: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "message": self.message}


@dataclass(frozen=True)
class Thresholds:
    """When each training-health warning fires. Every condition except `reward_flat` must hold on
    `patience` consecutive logged steps; a non-finite KL or value loss fires at once."""

    patience: int = 3  # consecutive steps a condition must hold (one noisy batch is not a trend)
    baseline_steps: int = 3  # the first steps, whose median is "the start" for relative thresholds
    kl_max: float = 20.0  # kl_runaway: KL to the reference (nats per response) at or above this
    entropy_fraction: float = 0.1  # entropy_collapse: policy entropy at or below this share of its start
    unique_fraction_min: float = 0.1  # response_collapse: distinct completions / batch at or below this
    empty_length: float = 1.5  # empty_responses: mean response length (tokens, stop token included) <= this
    flat_window: int = 10  # reward_flat: this many consecutive steps ...
    flat_tolerance: float = 1e-3  # ... whose mean reward stays within this range (max - min)
    value_loss_factor: float = 10.0  # value_loss_explosion: value loss at or above this multiple of its start
    mismatch_kl_max: float = 0.01  # sampler_mismatch: KL(sampler || trainer) per token at or above this


THRESHOLD_NAMES = [f.name for f in dataclasses.fields(Thresholds)]


def thresholds(**overrides: float) -> Thresholds:
    """`Thresholds` with some values replaced; an unknown name is refused with the valid ones listed."""
    unknown = sorted(set(overrides) - set(THRESHOLD_NAMES))
    if unknown:
        raise ValueError(
            f"unknown health threshold(s) {', '.join(unknown)}; valid: {', '.join(THRESHOLD_NAMES)}"
        )
    for name in ("patience", "baseline_steps", "flat_window"):
        if name in overrides:
            if float(overrides[name]) != int(overrides[name]) or int(overrides[name]) < 1:
                raise ValueError(
                    f"health threshold {name} must be a whole number >= 1, got {overrides[name]}"
                )
            overrides[name] = int(overrides[name])
    return Thresholds(**overrides)


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for every row that logged `key` (a row without `step` is placed by its index)."""
    return [
        (int(row.get("step", index)), float(row[key]))
        for index, row in enumerate(history)
        if isinstance(row.get(key), (int, float))
    ]


def _first_streak(series: list[tuple[int, float]], condition: Callable[[float], bool], length: int):
    """The first run of `length` consecutive points meeting `condition`: (first step, values), or None."""
    start = 0
    for index, (_, value) in enumerate(series):
        if not condition(value):
            start = index + 1
        elif index - start + 1 >= length:
            return series[start][0], [v for _, v in series[start : index + 1]]
    return None


def _first_non_finite(series: list[tuple[int, float]]) -> int | None:
    return next((step for step, value in series if not math.isfinite(value)), None)


def _start(series: list[tuple[int, float]], limits: Thresholds) -> float | None:
    """The median of the first `baseline_steps` finite values: what "normal" looked like."""
    first = [value for _, value in series if math.isfinite(value)][: limits.baseline_steps]
    return statistics.median(first) if first else None


def _kl_runaway(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    series = _series(history, "kl")
    bad = _first_non_finite(series)
    if bad is not None:
        return HealthWarning("kl_runaway", bad, f"The KL to the reference became non-finite at step {bad}.")
    streak = _first_streak(series, lambda kl: kl >= limits.kl_max, limits.patience)
    if streak is None:
        return None
    step, values = streak
    return HealthWarning(
        "kl_runaway",
        step,
        f"KL to the reference ran away: {values[0]:.3g} nats at step {step}, at or above kl_max="
        f"{limits.kl_max:g} for {len(values)} steps in a row (peak {max(v for _, v in series):.3g}). "
        "The policy is drifting far from the reference: raise kl_coef, use adaptive_kl or lower lr.",
    )


def _entropy_collapse(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    series = _series(history, "entropy")
    start = _start(series, limits)
    if start is None or start <= 0:
        return None
    floor = limits.entropy_fraction * start
    streak = _first_streak(series, lambda h: h <= floor, limits.patience)
    if streak is None:
        return None
    step, values = streak
    return HealthWarning(
        "entropy_collapse",
        step,
        f"Policy entropy collapsed: {values[0]:.3g} nats per token at step {step}, at most "
        f"{limits.entropy_fraction:g} of its start ({start:.3g}) for {len(values)} steps in a row. "
        "The policy has become nearly deterministic and explores no more.",
    )


def _sustained(
    history: list[dict],
    key: str,
    condition: Callable[[float], bool],
    limits: Thresholds,
    kind: str,
    message: Callable[[int, list[float]], str],
) -> HealthWarning | None:
    """A warning of `kind` from the first `patience` consecutive steps whose `key` meets `condition`;
    `message(step, values)` says what happened."""
    streak = _first_streak(_series(history, key), condition, limits.patience)
    return None if streak is None else HealthWarning(kind, streak[0], message(*streak))


def _response_collapse(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    return _sustained(
        history,
        "unique_fraction",
        lambda u: u <= limits.unique_fraction_min,
        limits,
        "response_collapse",
        lambda step, values: (
            f"Responses collapsed towards one string: only {values[0]:.0%} of the batch's completions were "
            f"distinct at step {step} (at most {limits.unique_fraction_min:.0%} for {len(values)} steps in "
            "a row). The policy answers every prompt the same way."
        ),
    )


def _empty_responses(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    return _sustained(
        history,
        "response_length",
        lambda n: n <= limits.empty_length,
        limits,
        "empty_responses",
        lambda step, values: (
            f"Responses collapsed to an immediate end: mean length {values[0]:.3g} tokens (stop token "
            f"included) at step {step}, at most {limits.empty_length:g} for {len(values)} steps in a row. "
            "Stopping at once is being rewarded: check the reward for short or empty answers."
        ),
    )


def _reward_flat(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    series = [(step, value) for step, value in _series(history, "reward") if math.isfinite(value)]
    for index in range(len(series) - limits.flat_window + 1):
        window = [value for _, value in series[index : index + limits.flat_window]]
        if max(window) - min(window) <= limits.flat_tolerance:
            step = series[index][0]
            return HealthWarning(
                "reward_flat",
                step,
                f"The mean reward stayed flat at {window[0]:.4g} (within {limits.flat_tolerance:g}) for "
                f"{limits.flat_window} steps from step {step}: there is no learning signal (a constant "
                "reward, a saturated reward model, or a policy that no longer changes).",
            )
    return None


def _value_loss_explosion(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    series = _series(history, "value_loss")
    bad = _first_non_finite(series)
    if bad is not None:
        return HealthWarning("value_loss_explosion", bad, f"The value loss became non-finite at step {bad}.")
    start = _start(series, limits)
    if start is None:
        return None
    ceiling = limits.value_loss_factor * max(start, 1e-8)
    streak = _first_streak(series, lambda loss: loss >= ceiling, limits.patience)
    if streak is None:
        return None
    step, values = streak
    return HealthWarning(
        "value_loss_explosion",
        step,
        f"The value loss exploded: {values[0]:.3g} at step {step}, at least {limits.value_loss_factor:g}x "
        f"its start ({start:.3g}) for {len(values)} steps in a row. The value head no longer tracks the "
        "returns: lower lr or vf_coef, or whiten rewards.",
    )


def _sampler_mismatch(history: list[dict], limits: Thresholds) -> HealthWarning | None:
    return _sustained(
        history,
        "mismatch/kl",
        lambda kl: not kl < limits.mismatch_kl_max,
        limits,
        "sampler_mismatch",
        lambda step, values: (
            f"The rollout engine samples from a distribution the trainer does not compute: KL(sampler || "
            f"trainer) {values[0]:.3g} per token at step {step}, at least {limits.mismatch_kl_max:g} for "
            f"{len(values)} steps in a row. Truncated importance sampling (tis_cap) corrects the gradient "
            "only up to its cap: check the engine's precision against the trainer's, or use "
            "rollout.engine: hf."
        ),
    )


CHECKS = (
    _kl_runaway,
    _entropy_collapse,
    _response_collapse,
    _empty_responses,
    _reward_flat,
    _value_loss_explosion,
    _sampler_mismatch,
)


def training_warnings(history: list[dict], **overrides: float) -> list[HealthWarning]:
    """Every training-health warning the history shows (at most one per kind), ordered by step.

    `overrides` replace fields of `Thresholds`. Rows missing a key are skipped by the checks that
    read it, so a history without e.g. `value_loss` (GRPO) or `unique_fraction` raises no error.
    """
    limits = thresholds(**overrides)
    found = [warning for check in CHECKS if (warning := check(history, limits)) is not None]
    return sorted(found, key=lambda warning: warning.step)


class HealthMonitor:
    """Reports each training-health warning once, as soon as it appears in a growing history.

    For use inside a training loop: `for w in monitor.check(history): log(w.message)` after each step.
    """

    def __init__(self, **overrides: float):
        self.overrides = overrides
        thresholds(**overrides)  # refuse bad names before training starts
        self.reported: set[str] = set()

    def check(self, history: list[dict]) -> list[HealthWarning]:
        new = [w for w in training_warnings(history, **self.overrides) if w.kind not in self.reported]
        self.reported.update(w.kind for w in new)
        return new


# ---------------------------------------------------------------- over-optimisation


def _scored(snapshots: Iterable[dict], *sources: str) -> list[dict]:
    """Snapshots that have a finite score for every source, ordered by step."""
    rows = [
        s
        for s in snapshots
        if all(isinstance((s.get("rewards") or {}).get(source), (int, float)) for source in sources)
        and all(math.isfinite(s["rewards"][source]) for source in sources)
    ]
    return sorted(rows, key=lambda s: s["step"])


def snapshot_kl_warning(snapshots: list[dict], kl_max: float = Thresholds.kl_max) -> HealthWarning | None:
    """A snapshot's policy at or above `kl_max` nats from the reference on the held-out prompts.

    The training history logs each step's rollouts before that step's update, so a single update that
    throws the policy far away (the last one above all) never shows there; a snapshot samples the policy
    after the update."""
    for snapshot in sorted(snapshots, key=lambda s: s["step"]):
        kl = snapshot.get("kl")
        if isinstance(kl, (int, float)) and (not math.isfinite(kl) or kl >= kl_max):
            step = int(snapshot["step"])
            return HealthWarning(
                "snapshot_kl_runaway",
                step,
                f"The policy of the step-{step} snapshot is {kl:.3g} nats from the reference on the held-out "
                f"prompts (at or above kl_max={kl_max:g}), a distance its training rollouts had not shown: "
                "an update moved it far at once. Lower lr, use fewer ppo_epochs, or raise kl_coef.",
            )
    return None


def best_snapshot(snapshots: list[dict], gold: str = "gold") -> dict | None:
    """The snapshot with the highest `gold` score (the earliest on a tie); None if none has one."""
    rows = _scored(snapshots, gold)
    return max(rows, key=lambda s: s["rewards"][gold]) if rows else None


def overoptimization_warning(
    snapshots: list[dict],
    proxy: str = "reward_model",
    gold: str = "gold",
    min_gold_drop: float = 0.05,
    min_proxy_rise: float = 0.0,
) -> HealthWarning | None:
    """Gao et al. (2022): the proxy reward kept rising after the gold reward peaked.

    Fires when the best snapshot by `gold` is not the last one, the last snapshot's gold score is
    more than `min_gold_drop` below the best's, and its proxy score is more than `min_proxy_rise`
    above the best's. The step is the best snapshot's: where optimising the proxy stopped helping.
    """
    rows = _scored(snapshots, proxy, gold)
    if len(rows) < 2:
        return None
    best = max(rows, key=lambda s: s["rewards"][gold])
    last = rows[-1]
    gold_drop = best["rewards"][gold] - last["rewards"][gold]
    proxy_rise = last["rewards"][proxy] - best["rewards"][proxy]
    if best is last or gold_drop <= min_gold_drop or proxy_rise <= min_proxy_rise:
        return None
    where = f" (saved at {best['path']})" if best.get("path") else " (no weights were saved for it)"
    return HealthWarning(
        "overoptimization",
        int(best["step"]),
        f"Over-optimisation (Gao et al., 2022): after step {best['step']} the {proxy} score kept rising "
        f"({best['rewards'][proxy]:.3f} -> {last['rewards'][proxy]:.3f} at step {last['step']}) while the "
        f"{gold} score fell ({best['rewards'][gold]:.3f} -> {last['rewards'][gold]:.3f}). The policy is "
        f"exploiting the {proxy}; the best checkpoint by {gold} is step {best['step']}{where}.",
    )
