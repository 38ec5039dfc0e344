"""Every stage on 2 CPU processes (gloo) gives what 1 process gives with the same global batch and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stages.rl.stage import measured_by_clock

# Two processes sum gradients and statistics in another order than one process: float32 rounding differs
# in the last bits, and a few optimizer steps amplify it a little. Anything beyond this is a real mismatch.
TOLERANCE = 2e-4
# Clip fractions count tokens past a threshold: a value within rounding of the threshold flips one token of
# the ~200 in a minibatch, so they may differ by about one token's share.
CLIP_FRACTION_TOLERANCE = 0.01
# The Trainer's held-out loss averages per-batch mean losses; on 2 processes each batch is half the
# global one, so sequences of different lengths weigh slightly differently. Training: TOLERANCE.
EVAL_TOLERANCE = 0.01


def stage_blocks(tiny_run: Path) -> dict:
    blocks = trainer_and_rl_blocks(tiny_run)
    # the value head on the policy's trunk: its gradients are summed over processes with the policy's
    blocks["ppo_shared"] = {**blocks["ppo"], "total_episodes": 32, "shared_value_head": True}
    del blocks["ppo_shared"]["checkpoint_every"]
    return blocks


def trainer_and_rl_blocks(tiny_run: Path) -> dict:
    return {
        "pretrain": {
            "kind": "pretrain",
            "data": "demo:reviews/corpus",
            "max_steps": 6,
            "batch_size": 16,
            "lr": 3e-3,
            "block_size": 32,
            "log_every": 100,
            "model": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300},
        },
        "sft": {
            "kind": "sft",
            "init_from": str(tiny_run / "pretrain"),
            "data": "demo:reviews/sft",
            "max_steps": 4,
            "batch_size": 8,
            "lr": 2e-3,
            "log_every": 100,
        },
        "reward": {
            "kind": "reward",
            "init_from": str(tiny_run / "sft"),
            "data": "demo:reviews/prefs",
            "max_steps": 4,
            "batch_size": 8,
            "lr": 2e-3,
            "log_every": 100,
            "eval_fraction": 0.02,
        },
        # responses end at different lengths on each process (EOS or the 12-token limit)
        "ppo": {
            "kind": "rl",
            "policy": str(tiny_run / "sft"),
            "reward_model": str(tiny_run / "reward"),
            "prompts": "demo:reviews/prompts",
            "total_episodes": 48,
            "batch_size": 16,
            "minibatch_size": 8,
            "ppo_epochs": 2,
            "max_new_tokens": 12,
            "checkpoint_every": 1,
        },
        # one prompt per step with 4 samples: the second process has no prompt at all
        "grpo": {
            "kind": "rl",
            "algorithm": "grpo",
            "policy": str(tiny_run / "sft"),
            "reward_model": None,
            "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
            "prompts": "demo:reviews/prompts",
            "total_episodes": 12,
            "batch_size": 1,
            "group_size": 4,
            "minibatch_size": 4,
            "ppo_epochs": 2,
            "max_new_tokens": 12,
        },
        "rloo": {
            "kind": "rl",
            "algorithm": "rloo",
            "policy": str(tiny_run / "sft"),
            "reward_model": None,
            "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
            "prompts": "demo:reviews/prompts",
            "total_episodes": 24,
            "batch_size": 3,
            "group_size": 4,
            "minibatch_size": 6,
            "ppo_epochs": 1,
            "max_new_tokens": 12,
            "normalize_rewards": True,
        },  # 3 prompts on 2 processes: 2 + 1
        "dpo": {
            "kind": "dpo",
            "init_from": str(tiny_run / "sft"),
            "data": "demo:reviews/prefs",
            "max_steps": 4,
            "batch_size": 8,
            "lr": 2e-3,
            "log_every": 100,
            "eval_fraction": 0.02,
        },
        # a BERT classifier built from scratch: the masked-LM family's path through the Trainer
        "task": {
            "kind": "task",
            "task": "classification",
            "data": "demo:sentiment/train",
            "eval_data": "demo:sentiment/test",
            "model": {
                "family": "bert",
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 2,
                "intermediate_size": 64,
                "vocab_size": 300,
                "dropout": 0.0,  # dropout masks are drawn per process: none, so 2 processes can match 1
            },
            "max_steps": 4,
            "batch_size": 8,
            "lr": 2e-3,
            "log_every": 100,
        },
    }


def run(
    config: dict, run_dir: Path, nproc: int, extra: tuple[str, ...] = (), env: dict | None = None
) -> subprocess.CompletedProcess:
    config_file = run_dir.parent / f"{run_dir.name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**{k: v for k, v in os.environ.items() if k != "RLHF_CRASH_AT"}, **(env or {})}
    command = [sys.executable, "-m", "pipeline", "run", str(config_file), "--run-dir", str(run_dir), *extra]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def outcome(run_dir: Path, stage: str) -> tuple[dict, dict]:
    record = json.loads((run_dir / stage / "rlhf_stage.json").read_text())
    history = run_dir / stage / "history.json"
    metrics = {
        k: v
        for k, v in record["metrics"].items()
        if k not in ("episodes_per_second", "peak_rss_mb", "peak_rss_added_mb") and not measured_by_clock(k)
    }
    if history.exists():
        metrics["history"] = [
            {k: v for k, v in r.items() if not measured_by_clock(k)} for r in json.loads(history.read_text())
        ]
    return metrics, load_file(run_dir / stage / "model.safetensors")


def assert_close(a, b, path="metrics"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif path.split(".")[-1].startswith("eval_") or path.endswith("perplexity"):
        assert a == pytest.approx(b, rel=EVAL_TOLERANCE), path
    elif path.endswith("clip_fraction"):
        assert a == pytest.approx(b, abs=CLIP_FRACTION_TOLERANCE), path
    else:
        assert a == pytest.approx(b, rel=TOLERANCE, abs=TOLERANCE), path


@pytest.mark.parametrize(
    "stage",
    ["pretrain", "sft", "reward", "dpo", "task", "ppo", "ppo_shared", "grpo", "rloo"],
)
def test_two_processes_match_one(stage, tiny_run, tmp_path):
    """Same losses, metrics and final weights; one writer publishes a folder that loads."""
    from transformers import AutoConfig

    config = {"name": "ddp", "seed": 5, "threads": 1, "stages": {stage: stage_blocks(tiny_run)[stage]}}
    single, double = run(config, tmp_path / "one", 1), run(config, tmp_path / "two", 2)
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stages"][stage]["status"] == "finished"
    family = "bert" if stage == "task" else "llama"
    assert AutoConfig.from_pretrained(tmp_path / "two" / stage).model_type == family  # published, loads
    (metrics_1, weights_1), (metrics_2, weights_2) = (
        outcome(tmp_path / "one", stage),
        outcome(tmp_path / "two", stage),
    )
    assert_close(metrics_2, metrics_1)
    assert weights_1.keys() == weights_2.keys()
    for name in weights_1:
        assert torch.allclose(weights_1[name], weights_2[name], rtol=TOLERANCE, atol=TOLERANCE), name


def test_a_checkpoint_written_by_two_processes_continues_in_one(tiny_run, tmp_path):
    config = {"name": "ddp", "seed": 5, "threads": 1, "stages": {"ppo": stage_blocks(tiny_run)["ppo"]}}
    env_crash = {**os.environ, "RLHF_CRASH_AT": "ppo.rollout:3"}
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(config))
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(config_file),
            "--run-dir",
            str(tmp_path / "two"),
            "--nproc",
            "2",
        ],
        env=env_crash,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "two" / ".work" / "ppo" / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]
    resumed = run(config, tmp_path / "two", 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000002" in resumed.stderr
    assert run(config, tmp_path / "one", 1).returncode == 0
    assert_close(outcome(tmp_path / "two", "ppo")[0], outcome(tmp_path / "one", "ppo")[0])
