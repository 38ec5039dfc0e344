"""What the runner hands a stage and what a stage hands back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# What a stage's published folder holds besides its model, read back by the evaluation and `rlhf compare`.
STAGE_RECORD_FILE = "rlhf_stage.json"  # the stage's name, kind, metrics, config and inputs (runner-written)
HISTORY_FILE = "history.json"  # `StageResult.history`, when the stage logged one


def read_json(folder: str | Path, name: str, default: Any) -> Any:
    """`folder/name` parsed, or `default` when the folder (a hub id, say) or the file is not there."""
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else default


@dataclass
class StageContext:
    name: str  # the stage's name in the pipeline
    config: Any  # the stage module's typed Config
    inputs: dict[str, str]  # input field -> local checkpoint path or hub id, resolved by the runner
    out_dir: Path  # write the stage's output here; the runner publishes it once run() returns
    work_dir: Path  # scratch space that survives a crash (resumable checkpoints)
    seed: int
    run_dir: Path | None = None


@dataclass
class StageResult:
    metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)  # per-step training log (RL curves)


class StageModule(Protocol):
    """What a stage kind is: a module (registered by one line in stages/__init__.py) with

    - `Config`: its typed config, a dataclass deriving from `pipeline.stage_config.StageConfig`, named for its
      stage (`SFTStageConfig`, `RLStageConfig`, ...); the input fields (checkpoints it starts from) are
      marked with `pipeline.stage_config.input_field`, and every value is checked when the config loads;
    - `run(ctx) -> StageResult`: trains, writes the output into `ctx.out_dir` and returns its metrics;
    - optionally `check(config)`: validates its data sources before any stage of the run trains.
    """

    Config: type

    def run(self, ctx: StageContext) -> StageResult: ...
