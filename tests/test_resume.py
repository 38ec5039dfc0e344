"""Reliability: a run killed at any point resumes from its last verified checkpoint and ends exactly where an
uninterrupted run ends; a corrupt checkpoint is skipped with a message; one process per run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.rundir import RunDir
from stages.rl.stage import measured_by_clock

# Measured per run, not resumable: wall-clock figures, and the Trainer's running mean of the training
# loss (transformers restarts that accumulator on resume; the weights and held-out metrics are exact).
MEASURED = {
    "episodes_per_second",
    "peak_rss_mb",
    "peak_rss_added_mb",
    "peak_cuda_mb",
}  # of the machine, not of the training
NOT_COMPARED = MEASURED | {"train_loss"}


def measured(key: str) -> bool:
    return key in MEASURED or measured_by_clock(key)


def stage_config(tiny_run: Path, stage: str) -> dict:
    """A one-stage config on the tiny run's checkpoints, checkpointing often."""
    blocks = {
        "pretrain": {
            "kind": "pretrain",
            "data": "demo:reviews/corpus",
            "max_steps": 12,
            "batch_size": 16,
            "lr": 3e-3,
            "block_size": 32,
            "checkpoint_every": 4,
            "log_every": 4,
            "model": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300},
        },
        "sft": {
            "kind": "sft",
            "init_from": str(tiny_run / "pretrain"),
            "data": "demo:reviews/sft",
            "max_steps": 9,
            "batch_size": 16,
            "lr": 2e-3,
            "checkpoint_every": 3,
            "log_every": 3,
        },
        "ppo": {
            "kind": "ppo",
            "policy": str(tiny_run / "sft"),
            "reward_model": str(tiny_run / "reward"),
            "prompts": "demo:reviews/prompts",
            "total_episodes": 64,
            "batch_size": 16,
            "minibatch_size": 8,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "checkpoint_every": 1,
        },
        "dapo": {  # a group algorithm whose dynamic sampling draws a varying number of prompt batches
            "kind": "rl",
            "algorithm": "dapo",
            "policy": str(tiny_run / "sft"),
            "reward_model": None,
            "reward_functions": {"reward_models.rules:ends_with_period": 1.0},
            "prompts": "demo:reviews/prompts",
            "total_episodes": 64,
            "batch_size": 4,
            "group_size": 4,
            "minibatch_size": 8,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "checkpoint_every": 1,
        },
    }
    return {"name": "resume", "seed": 3, "threads": 1, "stages": {stage: blocks[stage]}}


def run_cli(config: dict, run_dir: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RLHF_CRASH_AT": crash_at} if crash_at else dict(os.environ)
    env.pop("RLHF_CRASH_AT", None) if not crash_at else None
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(config_file), "--run-dir", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def final_metrics(run_dir: Path, stage: str) -> dict:
    record = json.loads((run_dir / stage / "rlhf_stage.json").read_text())
    history = run_dir / stage / "history.json"
    rows = json.loads(history.read_text()) if history.exists() else []
    metrics = {
        k: v for k, v in record["metrics"].items() if k not in NOT_COMPARED and not measured_by_clock(k)
    }
    history = [{k: v for k, v in r.items() if not measured_by_clock(k)} for r in rows]
    return {"metrics": metrics, "history": history}


def weights(run_dir: Path, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / stage / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_run, tmp_path_factory):
    """Each stage run once without a crash: the reference every resumed run must reproduce."""
    results = {}
    for stage in ("pretrain", "sft", "ppo", "dapo"):
        run_dir = tmp_path_factory.mktemp(f"clean-{stage}") / "run"
        completed = run_cli(stage_config(tiny_run, stage), run_dir)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results[stage] = run_dir
    return results


@pytest.mark.parametrize(
    "stage,crash_at,by_time",
    [
        ("pretrain", "train.step:6", False),  # between checkpoints 4 and 8
        ("sft", "train.step:7", False),
        ("ppo", "ppo.rollout:3", False),  # mid-rollout: sampled, not yet scored
        ("ppo", "ppo.update:3", False),  # mid-update: the first minibatch already stepped the weights
        ("ppo", "ppo.checkpoint:2", False),  # while writing checkpoint 2: it must not be trusted
        ("ppo", "ppo.update:3", True),  # the RL stage's default: no checkpoint_every, checkpoints by time
        ("dapo", "ppo.update:3", False),  # a group algorithm, with dynamic sampling's extra prompt draws
    ],
)
def test_a_killed_stage_resumes_to_the_same_result(
    stage, crash_at, by_time, tiny_run, uninterrupted, tmp_path
):
    import torch

    run_dir = tmp_path / "run"
    config = stage_config(tiny_run, stage)
    if by_time:
        del config["stages"][stage]["checkpoint_every"]
    killed = run_cli(config, run_dir, crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((run_dir / "manifest.json").read_text())["stages"][stage]["status"] == "running"
    assert not (run_dir / stage).exists()

    resumed = run_cli(config, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert final_metrics(run_dir, stage) == final_metrics(uninterrupted[stage], stage)
    ours, theirs = weights(run_dir, stage), weights(uninterrupted[stage], stage)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_rl_checkpoints_by_time_cost_at_most_their_overhead():
    """The first checkpoint after step 1; then one whenever the time since the last write reaches its cost
    divided by the overhead (a 0.5 s write at 5%: 10 s later); never at the last step."""
    from stages.rl.checkpoint import CheckpointSchedule

    now = [0.0]
    schedule = CheckpointSchedule(None, 0.05, clock=lambda: now[0])
    assert schedule.due(1, 10)
    now[0] = 3.0
    with schedule.writing():
        now[0] = 3.5
    now[0] = 13.4
    assert not schedule.due(2, 10)
    now[0] = 13.5
    assert schedule.due(3, 10) and not schedule.due(10, 10)
    assert not CheckpointSchedule(None, None).due(1, 10)
    steps = CheckpointSchedule(4, 0.05)
    assert [s for s in range(1, 13) if steps.due(s, 12)] == [4, 8]


def test_a_truncated_newest_checkpoint_is_skipped_for_the_one_before(tiny_run, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    config = stage_config(tiny_run, "ppo")
    assert run_cli(config, run_dir, "ppo.rollout:4").returncode == -signal.SIGKILL
    checkpoints = sorted((run_dir / ".work" / "ppo" / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-000002", "step-000003"]
    newest = checkpoints[-1] / "policy.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # a disk that filled up mid-write

    resumed = run_cli(config, run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint step-000003 is not usable: policy.safetensors is 100 bytes" in resumed.stderr
    assert "resuming from step-000002" in resumed.stderr
    assert final_metrics(run_dir, "ppo") == final_metrics(uninterrupted["ppo"], "ppo")


def test_a_second_process_on_the_same_run_directory_is_refused(tiny_run, tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(stage_config(tiny_run, "ppo")))
    run_dir = tmp_path / "run"
    rundir = RunDir(run_dir)
    rundir.prepare()
    with rundir.lock():
        assert main(["run", str(config_file), "--run-dir", str(run_dir)]) == 2
    assert "is in use by another rlhf process" in capsys.readouterr().err


def test_a_dead_process_does_not_leave_the_lock_stuck(tmp_path):
    run_dir = tmp_path / "run"
    RunDir(run_dir).prepare()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pipeline.rundir import RunDir\n"
                f"with RunDir({str(run_dir)!r}).lock():\n    print('locked', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunDir(run_dir).lock():  # would raise if the dead holder's lock had survived it
        pass


def test_same_config_and_seed_give_the_same_metrics(tiny_run, tiny_config_file, tmp_path):
    assert main(["run", str(tiny_config_file), "--run-dir", str(tmp_path / "again")]) == 0
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (tiny_run, tmp_path / "again"))
    for stage in first["stages"]:
        a = {k: v for k, v in first["stages"][stage]["metrics"].items() if not measured(k)}
        b = {k: v for k, v in second["stages"][stage]["metrics"].items() if not measured(k)}
        assert a == b, stage
    eval_a, eval_b = (
        json.loads((d / "eval" / "metrics.json").read_text()) for d in (tiny_run, tmp_path / "again")
    )
    assert eval_a["policies"] == eval_b["policies"] and eval_a["differences"] == eval_b["differences"]
