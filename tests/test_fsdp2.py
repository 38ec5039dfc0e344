"""The RL stage's `fsdp2` engine on 2 CPU processes (gloo): every model sharded, the same training as the
replicated engine, checkpoints that resume on another process count, a whole model folder at the end."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from test_distributed import TOLERANCE, assert_close, outcome, run, trainer_and_rl_blocks

pytestmark = pytest.mark.slow


def rl_blocks(tiny_run) -> dict:
    blocks = trainer_and_rl_blocks(tiny_run)
    # PPO with a value model and a learned reward model, all sharded; responses end at different lengths
    ppo = {k: v for k, v in blocks["ppo"].items() if k != "checkpoint_every"}
    return {
        "ppo": ppo,
        # LoRA: the reference is the policy with its adapter off; the value model trains an adapter too
        "ppo_lora": {**ppo, "lr": 3e-3, "lora": {"enabled": True, "r": 4, "alpha": 8}},
        # one prompt per step with 4 samples: the second process has no prompt, only weight-0 rows
        "grpo": blocks["grpo"],
        # the value head on the policy's last hidden state: one sharded forward gives logits and values
        "ppo_shared": {**ppo, "total_episodes": 32, "shared_value_head": True},
    }


def config(block: dict, stage: str, engine: str) -> dict:
    return {"name": "fsdp", "seed": 5, "threads": 1, "stages": {stage: {**block, "engine": engine}}}


def held_fraction(stderr: str) -> float:
    """This process's share of the policy's parameters, from the stage's log line about its engine."""
    match = re.search(r"engine fsdp2: this process holds ([\d,]+) of ([\d,]+) policy parameters", stderr)
    assert match, stderr[-2000:]
    held, total = (int(group.replace(",", "")) for group in match.groups())
    return held / total


@pytest.mark.parametrize("stage", ["ppo", "ppo_lora", "grpo", "ppo_shared"])
def test_fsdp2_on_two_processes_trains_like_the_replicated_engine(stage, tiny_run, tmp_path):
    """Same rewards, KL, losses and final weights as one replicated process, within the tolerance two
    processes already need (test_distributed.py: sums in another order); each process holds about half."""
    block = rl_blocks(tiny_run)[stage]
    replicated = run(config(block, stage, "replicated"), tmp_path / "replicated", 1)
    sharded = run(config(block, stage, "fsdp2"), tmp_path / "fsdp2", 2)
    assert replicated.returncode == 0, replicated.stderr[-3000:]
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert 0.4 < held_fraction(sharded.stderr) < 0.6
    assert "memory plan per process (2 processes, engine fsdp2)" in sharded.stderr
    (metrics_1, weights_1), (metrics_2, weights_2) = (
        outcome(tmp_path / "replicated", stage),
        outcome(tmp_path / "fsdp2", stage),
    )
    assert_close(metrics_2, metrics_1)
    assert weights_1.keys() == weights_2.keys()  # the gathered folder is a whole model, LoRA merged
    for name in weights_1:
        assert torch.allclose(weights_1[name], weights_2[name], rtol=TOLERANCE, atol=TOLERANCE), name
    if stage == "ppo_lora":
        assert (tmp_path / "fsdp2" / stage / "adapter" / "adapter_config.json").is_file()


def test_a_sharded_checkpoint_resumes_on_one_and_on_two_processes(tiny_run, tmp_path):
    block = {**rl_blocks(tiny_run)["ppo"], "checkpoint_every": 1}
    sharded = config(block, "ppo", "fsdp2")
    whole = run(sharded, tmp_path / "whole", 2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run(sharded, tmp_path / "two", 2, env={"RLHF_CRASH_AT": "ppo.rollout:3"})
    assert killed.returncode != 0
    checkpoints = tmp_path / "two" / ".work" / "ppo" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000001", "step-000002"]
    assert (checkpoints / "step-000002" / "shards" / ".metadata").is_file()
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    for name, nproc in (("two", 2), ("one", 1)):
        resumed = run(sharded, tmp_path / name, nproc)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from step-000002" in resumed.stderr
        (metrics, weights), (expected, expected_weights) = (
            outcome(tmp_path / name, "ppo"),
            outcome(tmp_path / "whole", "ppo"),
        )
        assert_close(metrics, expected)
        for key in expected_weights:
            assert torch.allclose(weights[key], expected_weights[key], rtol=TOLERANCE, atol=TOLERANCE), key


def test_a_replicated_checkpoint_is_not_resumed_by_the_fsdp2_engine(tiny_run, tmp_path):
    block = {**rl_blocks(tiny_run)["grpo"], "checkpoint_every": 1}
    crash = {"RLHF_CRASH_AT": "ppo.rollout:2"}
    killed = run(config(block, "grpo", "replicated"), tmp_path / "run", 1, env=crash)
    assert killed.returncode != 0
    resumed = run(config(block, "grpo", "fsdp2"), tmp_path / "run", 1)
    assert resumed.returncode == 2
    assert "was written by engine replicated; this run uses fsdp2" in resumed.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["grpo"]["status"] == "failed"
