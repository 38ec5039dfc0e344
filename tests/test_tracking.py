"""Experiment trackers users already use, with no network: wandb offline and an MLflow file store receive
the RL stage's per-step metrics, its config and its final metrics; a tracker whose package is missing stops
the run before anything trains, naming what to install."""

from __future__ import annotations

import json

import pytest
from conftest import gold_rl_block

from pipeline.cli import main


def rl_config(tiny_run, report_to: list[str]) -> dict:
    block = gold_rl_block(kind="rl", algorithm="grpo", policy=str(tiny_run / "sft"), report_to=report_to)
    return {"name": "tracked", "threads": 2, "stages": {"rl": block}}


def run(config: dict, tmp_path) -> int:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["run", str(path), "--run-dir", str(tmp_path / "run")])


def wandb_records(path):
    """The protobuf records of an offline wandb run file: a LevelDB-style log (7-byte header, 32 KiB
    blocks of chunks: crc32, length, type), the format `wandb sync` reads."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, position, pending, records = path.read_bytes(), 7, b"", []
    while position < len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_gets_the_rl_metrics(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert run(rl_config(tiny_run, ["wandb"]), tmp_path) == 0
    (run_file,) = (tmp_path / "run" / "logs" / "rl").glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    rows = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]
    history = json.loads((tmp_path / "run" / "rl" / "history.json").read_text())
    assert [row["_step"] for row in rows] == [1, 2]
    assert [row["reward"] for row in rows] == pytest.approx([row["reward"] for row in history])
    assert "final/reward_last" in rows[-1]
    (config,) = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    values = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in config.update}
    assert values["algorithm"] == "grpo" or values["algorithm"] == {"value": "grpo"}
    # the run directory's config and manifest are saved with the run
    (files,) = (tmp_path / "run" / "logs" / "rl").glob("wandb/offline-run-*/files")
    assert json.loads((files / "manifest.json").read_text())["stages"]["rl"]
    assert (files / "config.yaml").read_text() == (tmp_path / "run" / "config.yaml").read_text()


def test_mlflow_file_store_gets_every_step(tiny_run, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert run(rl_config(tiny_run, ["mlflow"]), tmp_path) == 0
    client = MlflowClient((tmp_path / "run" / "logs" / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "rl"]
    (tracked,) = client.search_runs([experiment.experiment_id])
    history = json.loads((tmp_path / "run" / "rl" / "history.json").read_text())
    rewards = client.get_metric_history(tracked.info.run_id, "reward")
    assert [m.step for m in rewards] == [1, 2]
    assert [m.value for m in rewards] == pytest.approx([row["reward"] for row in history])
    assert tracked.data.params["algorithm"] == "grpo" and "final/reward_last" in tracked.data.metrics
    assert {a.path for a in client.list_artifacts(tracked.info.run_id, "run")} == {
        "run/config.yaml",
        "run/manifest.json",
    }


def test_a_trainer_stage_sends_its_metrics_and_the_run_files_to_mlflow(tiny_run, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    block = {
        "kind": "sft",
        "init_from": str(tiny_run / "sft"),
        "data": "demo:reviews/sft",
        "max_steps": 2,
        "log_every": 1,
        "report_to": ["mlflow"],
    }
    assert run({"name": "tracked", "threads": 2, "stages": {"sft": block}}, tmp_path) == 0
    mlflow.flush_async_logging()  # transformers' callback logs asynchronously; a process exit flushes too
    client = MlflowClient((tmp_path / "run" / "logs" / "mlruns").resolve().as_uri())
    (tracked,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "loss")] == [1, 2]
    assert {a.path for a in client.list_artifacts(tracked.info.run_id, "run")} == {
        "run/config.yaml",
        "run/manifest.json",
    }


def test_a_tracker_that_is_not_installed_stops_the_run_before_training(tiny_run, tmp_path, capsys):
    assert run(rl_config(tiny_run, ["comet_ml"]), tmp_path) == 2
    err = capsys.readouterr().err
    assert "report_to names 'comet_ml'" in err and "rlhf-pipeline[tracking]" in err
    assert not (tmp_path / "run" / "rl").exists()
