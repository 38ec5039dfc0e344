"""Experiment trackers (`report_to`) for every stage: where each writes, and a clear error before anything
trains when its package is missing.

Trackers write under <run-dir>/logs/<stage>: TensorBoard event files there, wandb's run folder there
(offline with WANDB_MODE=offline), and MLflow runs in a file store, <run-dir>/logs/mlruns, unless
MLFLOW_TRACKING_URI names another (MLflow 3 keeps its file store in maintenance and asks for an
explicit opt-in, given here; the SQLite store needs the full mlflow package, not mlflow-skinny). The
Trainer stages report through transformers' callbacks, the RL stage through Accelerate's trackers; both
read these locations from the environment, which is set here once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.distributed import is_main
from pipeline.errors import ConfigError

RUN_FILES = ("config.yaml", "manifest.json")  # the run directory's resolved config and manifest
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
# Locations the user chose before the run started win over the run directory's (read once, at import).
USER_SET = {
    name for name in ("WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME") if name in os.environ
}
EXTRA = "pip install 'rlhf-pipeline[tracking]'"


def check_installed(report_to: list[str], stage: str) -> None:
    """Refuse a tracker whose package is not installed, naming what to install (before anything trains)."""
    for name in report_to:
        package = PACKAGES.get(name, name)
        if name not in ("all", "none") and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"Stage '{stage}': report_to names {name!r}, but its package '{package}' is not installed. "
                f"Install it with {EXTRA} (tensorboard, wandb and mlflow), or pip install {package}."
            )


def set_locations(report_to: list[str], logs_dir: Path) -> None:
    """Point each tracker at the run directory (values the user already set in the environment win)."""
    if "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logs_dir)
    if "wandb" in report_to and "WANDB_DIR" not in USER_SET:
        logs_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(logs_dir)  # each stage's runs under its own logs folder
    if "mlflow" in report_to and "MLFLOW_TRACKING_URI" not in USER_SET:
        store = logs_dir.parent / "mlruns"
        store.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = store.resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if "mlflow" in report_to and "MLFLOW_EXPERIMENT_NAME" not in USER_SET:
        # one experiment per stage, as the RL stage's tracker names it; transformers' callback would use
        # the default experiment, which a new file store does not have
        os.environ["MLFLOW_EXPERIMENT_NAME"] = logs_dir.name
    if "mlflow" in report_to:
        import mlflow

        if mlflow.active_run() is not None:  # an earlier stage's run, in a pipeline run's one process
            mlflow.end_run()


def start_mlflow_run(report_to: list[str], stage: str) -> None:
    """Open the stage's MLflow run before its Trainer logs anything (the main process only, as
    transformers' callback does). Its callback then logs into this run and leaves it open at the end of
    training, so the held-out evaluation after training lands in the same run, not in a stray new one."""
    if "mlflow" not in report_to or not is_main():
        return
    import mlflow

    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", stage))
    mlflow.start_run(run_name=stage)


def tracker_keys(row: dict[str, float]) -> dict[str, float]:
    """A logged row with names every tracker takes: a source's score `reward/<module:function>` becomes
    `reward_by_source/<module.function>` (MLflow refuses ':' in a name, and its file store cannot hold
    both a `reward` metric and metrics under `reward/`)."""
    renamed = {}
    for key, value in row.items():
        if key.startswith("reward/"):
            key = "reward_by_source/" + key.removeprefix("reward/")
        renamed[key.replace(":", ".")] = value
    return renamed


def run_files(run_dir: Path | None) -> list[Path]:
    """The run directory's config and manifest, those that exist (a standalone stage may have neither)."""
    return [run_dir / name for name in RUN_FILES if run_dir is not None and (run_dir / name).is_file()]


def log_run_files(report_to: list[str], files: list[Path], logs_dir: Path) -> None:
    """Attach `files` to the stage's tracker runs, so a run found in the tracker says what produced it:
    an artifact in MLflow, a saved file in wandb, a text entry in TensorBoard. Call it while the trackers'
    runs are open (after they start, on the main process)."""
    if not files:
        return
    if "mlflow" in report_to:
        import mlflow

        if mlflow.active_run() is not None:
            for path in files:
                mlflow.log_artifact(str(path), artifact_path="run")
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            for path in files:
                wandb.run.save(str(path), base_path=str(path.parent), policy="now")
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(logs_dir)) as writer:
            for path in files:
                writer.add_text(f"run/{path.name}", "```\n" + path.read_text() + "\n```")
