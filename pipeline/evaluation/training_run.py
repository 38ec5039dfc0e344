"""What the candidate's folder says about how it was trained, and what that means for the report: the RL
engine's training-health and over-optimisation warnings, and the best snapshot by the held-out score.

Everything is read from the folder (a run's stage folder or a copy of one); a model trained elsewhere
has none of these files and gets a report without them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.evaluation.config import EvaluationConfig
from pipeline.evaluation.result import GOLD, PROXY, BestCheckpoint, Snapshot
from stages.base import HISTORY_FILE, STAGE_RECORD_FILE, read_json
from stages.rl.health import (
    HealthWarning,
    best_snapshot,
    overoptimization_warning,
    snapshot_kl_warning,
    thresholds,
    training_warnings,
)
from stages.rl.snapshots import SNAPSHOTS_FILE


@dataclass(frozen=True)
class TrainingRun:
    name: str  # the candidate's name in the evaluation
    folder: str
    metrics: dict[str, Any]  # the stage's own metrics (`rlhf_stage.json`)
    history: list[dict]  # one row per RL step (`history.json`)
    snapshots: list[dict]  # the RL stage's scored snapshots (`snapshots.json`)

    @classmethod
    def read(cls, name: str, folder: str) -> TrainingRun:
        record = read_json(folder, STAGE_RECORD_FILE, {})
        return cls(
            name,
            folder,
            record.get("metrics", {}),
            read_json(folder, HISTORY_FILE, []),
            read_json(folder, SNAPSHOTS_FILE, []),
        )

    @property
    def summary(self) -> dict[str, Any]:
        """The report's Training section: the stage's name, then its metrics."""
        return {"stage": self.name, **self.metrics}


@dataclass(frozen=True)
class RunChecks:
    warnings: list[HealthWarning]  # training health, then over-optimisation
    best: BestCheckpoint | None


def check_run(run: TrainingRun, health: dict[str, Any]) -> RunChecks:
    """The warnings of the run's history and snapshots, and its best snapshot by the held-out score."""
    snapshots = run.snapshots
    warnings = training_warnings(run.history, **health)
    jump = snapshot_kl_warning(snapshots, thresholds(**health).kl_max)
    warnings += [jump] if jump else []
    scored = {key for snapshot in snapshots for key in (snapshot.get("rewards") or {})}
    # Gold if the snapshots were scored by it, else a held-out scorer; the proxy is what RL optimised.
    gold = GOLD if GOLD in scored else next((k for k in sorted(scored) if k != PROXY), None)
    proxy = PROXY if PROXY in scored else next((k for k in sorted(scored) if k != gold), None)
    if gold and proxy:
        warning = overoptimization_warning(snapshots, proxy=proxy, gold=gold)
        warnings += [warning] if warning else []
    best = best_snapshot(snapshots, gold=gold) if gold else None
    if best is None:
        return RunChecks(warnings, None)
    return RunChecks(warnings, BestCheckpoint(Snapshot.from_dict(best), run.name, gold))


def best_checkpoint_policy(
    best: BestCheckpoint | None, run: TrainingRun, cfg: EvaluationConfig
) -> tuple[str, str, str] | None:
    """(name, source, folder) of the candidate's best snapshot, to evaluate it beside the others.

    None when it is off, there is no best snapshot, its weights were not kept, or it is the last
    snapshot (the candidate itself). The name is `<candidate>@<step>`, the source its path in the run.
    """
    if not cfg.evaluate_best_checkpoint or best is None or not best.snapshot.path:
        return None
    if best.snapshot.step == max(s["step"] for s in run.snapshots):
        return None
    folder = Path(run.folder) / best.snapshot.path
    if not (folder / "config.json").is_file():
        return None
    return f"{cfg.candidate}@{best.snapshot.step}", f"{cfg.candidate}/{best.snapshot.path}", str(folder)
