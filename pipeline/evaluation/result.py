"""The evaluation's result, typed: every number `metrics.json` holds, written by `to_dict` and read back by
`from_dict` (so `rlhf eval`, `rlhf compare` and the report work from one shape, and an old metrics.json
still renders).

Estimates carry a mean and a bootstrap interval (`stats.Estimate`); warnings are the RL engine's own
`HealthWarning`s; snapshots are the rows of the candidate's `snapshots.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.evaluation.stats import Estimate
from stages.rl.health import HealthWarning

GOLD, PROXY = "gold", "reward_model"
DISTINCT_PREFIX = "distinct_"


def _estimates(data: dict | None) -> dict[str, Estimate]:
    return {key: Estimate.from_dict(value) for key, value in (data or {}).items()}


def _optional(data: dict | None) -> Estimate | None:
    return Estimate.from_dict(data) if data else None


def _dicts(estimates: dict[str, Estimate]) -> dict[str, dict]:
    return {key: value.to_dict() for key, value in estimates.items()}


@dataclass(frozen=True)
class PolicyResult:
    """One policy's samples, summarised: each reward source, KL, length, diversity, perplexity."""

    source: str  # as named in the config (a stage name, a folder or a hub id)
    rewards: dict[str, Estimate]
    kl_to_reference: Estimate | None  # None when its vocabulary differs from the reference's
    response_length: Estimate | None
    distinct: dict[int, float] = field(default_factory=dict)  # n -> distinct-n
    unique_completions: float | None = None
    perplexity_under_reference: Estimate | None = None
    win_rate: dict[str, Estimate] | None = None  # against the baseline, per source; None for the baseline

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "rewards": _dicts(self.rewards),
            "kl_to_reference": self.kl_to_reference.to_dict() if self.kl_to_reference else None,
            "response_length": self.response_length.to_dict() if self.response_length else None,
            **{f"{DISTINCT_PREFIX}{n}": value for n, value in self.distinct.items()},
            "unique_completions": self.unique_completions,
            "perplexity_under_reference": (
                self.perplexity_under_reference.to_dict() if self.perplexity_under_reference else None
            ),
        }
        if self.win_rate is not None:
            out["win_rate"] = _dicts(self.win_rate)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PolicyResult:
        distinct = {
            int(key.removeprefix(DISTINCT_PREFIX)): float(value)
            for key, value in data.items()
            if key.startswith(DISTINCT_PREFIX) and value is not None
        }
        unique = data.get("unique_completions")
        return cls(
            source=str(data.get("source", "")),
            rewards=_estimates(data.get("rewards")),
            kl_to_reference=_optional(data.get("kl_to_reference")),
            response_length=_optional(data.get("response_length")),
            distinct=dict(sorted(distinct.items())),
            unique_completions=None if unique is None else float(unique),
            perplexity_under_reference=_optional(data.get("perplexity_under_reference")),
            win_rate=_estimates(data["win_rate"]) if data.get("win_rate") is not None else None,
        )


@dataclass(frozen=True)
class Snapshot:
    """The RL stage's score of its own policy at one step, on its held-out prompts (`snapshots.json`)."""

    step: int
    episodes: int | None
    rewards: dict[str, float]  # mean per source
    kl: float | None
    response_length: float | None
    path: str | None  # its weights, relative to the stage's folder; None when they were not kept

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "episodes": self.episodes,
            "rewards": dict(self.rewards),
            "kl": self.kl,
            "response_length": self.response_length,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Snapshot:
        return cls(
            step=int(data.get("step", 0)),
            episodes=data.get("episodes"),
            rewards=dict(data.get("rewards") or {}),
            kl=data.get("kl"),
            response_length=data.get("response_length"),
            path=data.get("path"),
        )


@dataclass(frozen=True)
class BestCheckpoint:
    """The snapshot with the best held-out (gold) score, and how it compares with the final policy."""

    snapshot: Snapshot
    stage: str | None  # the stage whose folder holds `snapshot.path`
    judged_by: str  # the reward source that chose it
    evaluated_as: str | None = None  # its policy name in `policies`, when it was evaluated beside the others
    difference_vs_candidate: dict[str, Estimate] | None = None  # it minus the final candidate, per source

    @property
    def score(self) -> float | None:
        return self.snapshot.rewards.get(self.judged_by)

    def to_dict(self) -> dict[str, Any]:
        out = {**self.snapshot.to_dict(), "stage": self.stage, "judged_by": self.judged_by}
        if self.evaluated_as is not None:
            out["evaluated_as"] = self.evaluated_as
        if self.difference_vs_candidate is not None:
            out["difference_vs_candidate"] = _dicts(self.difference_vs_candidate)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BestCheckpoint:
        differences = data.get("difference_vs_candidate")
        return cls(
            snapshot=Snapshot.from_dict(data),
            stage=data.get("stage"),
            judged_by=str(data.get("judged_by", GOLD)),
            evaluated_as=data.get("evaluated_as"),
            difference_vs_candidate=_estimates(differences) if differences is not None else None,
        )


@dataclass(frozen=True)
class EvaluationResult:
    """Baseline vs candidate (and any other policies) on the same prompts, with the RL run's warnings."""

    baseline: str
    candidate: str
    policies: dict[str, PolicyResult]  # baseline, candidate, then the others, in evaluation order
    differences: dict[str, Estimate]  # candidate minus baseline per reward source, paired by prompt
    settings: dict[str, Any] = field(default_factory=dict)  # what the evaluation ran with, shown as is
    training: dict[str, Any] = field(default_factory=dict)  # the candidate stage's own metrics
    warnings: list[HealthWarning] | None = None  # None: no training run was checked
    snapshots: list[Snapshot] = field(default_factory=list)
    best_checkpoint: BestCheckpoint | None = None

    @property
    def confidence(self) -> float:
        return float(self.settings.get("confidence", 0.95))

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "policies": {name: policy.to_dict() for name, policy in self.policies.items()},
            "differences": _dicts(self.differences),
            "settings": self.settings,
            "training": self.training,
            "warnings": [warning.to_dict() for warning in self.warnings or []],
            "snapshots": [snapshot.to_dict() for snapshot in self.snapshots],
            "best_checkpoint": self.best_checkpoint.to_dict() if self.best_checkpoint else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationResult:
        warnings = data.get("warnings")
        best = data.get("best_checkpoint")
        return cls(
            baseline=str(data["baseline"]),
            candidate=str(data["candidate"]),
            policies={name: PolicyResult.from_dict(p) for name, p in (data.get("policies") or {}).items()},
            differences=_estimates(data.get("differences")),
            settings=dict(data.get("settings") or {}),
            training=dict(data.get("training") or {}),
            warnings=None if warnings is None else [HealthWarning(**w) for w in warnings],
            snapshots=[Snapshot.from_dict(s) for s in data.get("snapshots") or []],
            best_checkpoint=BestCheckpoint.from_dict(best) if best else None,
        )
