"""The Trainer stages sharded with FSDP2 on 2 CPU processes give what 1 plain process gives.

Launched as `accelerate launch --config_file configs/accelerate/fsdp.yaml` would launch them: the FSDP_*
environment that accelerate's launcher derives from that file, on `rlhf run --nproc 2` (torchrun). On CPU
Accelerate ignores that environment (see tests/cpu_fsdp/sitecustomize.py), so the tests put the shim that
lifts this one check on PYTHONPATH; everything else (Accelerate's plugin, `fully_shard`, the Trainer's FSDP
path, the stages' gathered final save) is the code a GPU launch runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from test_distributed import TOLERANCE, assert_close, outcome, run, trainer_and_rl_blocks

SHIM = Path(__file__).resolve().parent / "cpu_fsdp"


def fsdp_environment(config_file: Path) -> dict[str, str]:
    """What `accelerate launch --config_file <file>` exports for an `fsdp_config` block (accelerate's
    launcher turns each fsdp_* key into an FSDP_* variable)."""
    fsdp = yaml.safe_load(config_file.read_text())["fsdp_config"]
    env = {"ACCELERATE_USE_FSDP": "true", "PYTHONPATH": f"{SHIM}:{Path.cwd()}"}
    for key, value in fsdp.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env["FSDP_" + key.removeprefix("fsdp_").upper()] = text
    env["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"  # the stages load each checkpoint on every process
    return env


STAGES = ["pretrain", "sft", "sft_lora", "reward", "dpo"]


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> tuple[Path, Path, str]:
    blocks = trainer_and_rl_blocks(tiny_run)
    lora = {"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"]}
    blocks["sft_lora"] = {**blocks["sft"], "lora": lora}
    config = {"name": "fsdp", "seed": 5, "threads": 1, "stages": {name: blocks[name] for name in STAGES}}
    root = tmp_path_factory.mktemp("trainer_fsdp")
    single = run(config, root / "one", 1)
    assert single.returncode == 0, single.stderr[-3000:]
    env = fsdp_environment(Path("configs/accelerate/fsdp.yaml"))
    sharded = run(config, root / "two", 2, env=env)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    return root / "one", root / "two", sharded.stderr


def test_each_process_holds_half_of_each_model(runs):
    log = runs[2]
    for stage in STAGES:
        held = re.findall(rf"\[{stage}\] FSDP2: this process holds ([\d.]+)% of the parameters", log)
        assert len(held) == 1, (stage, log[-3000:])  # the main process's line
        assert 40 < float(held[0]) < 60, (stage, held)


@pytest.mark.parametrize("stage", STAGES)
def test_fsdp2_on_two_processes_matches_one_plain_process(stage, runs):
    """Same losses and metrics, and a final folder of whole weights (gathered from the shards) equal to the
    unsharded run's."""
    from transformers import AutoModel

    one, two, _ = runs
    (metrics_1, weights_1), (metrics_2, weights_2) = outcome(one, stage), outcome(two, stage)
    assert_close(metrics_2, metrics_1)
    assert weights_1.keys() == weights_2.keys()
    for name in weights_1:
        assert torch.allclose(weights_1[name], weights_2[name], rtol=TOLERANCE, atol=TOLERANCE), name
    AutoModel.from_pretrained(two / stage)  # a plain from_pretrained folder of whole weights


def test_a_sharded_trainer_checkpoint_resumes_with_the_uninterrupted_results(tiny_run, tmp_path):
    """SIGKILL after step 3 of 4 (checkpoint at step 2, sharded as fsdp.yaml asks); the rerun resumes from
    it on 2 processes and ends where the uninterrupted run ends, its held-out loss before training (kept
    from the first attempt, not re-measured on the checkpoint) included."""
    block = {**trainer_and_rl_blocks(tiny_run)["sft"], "checkpoint_every": 2}
    config = {"name": "fsdp", "seed": 5, "threads": 1, "stages": {"sft": block}}
    env = fsdp_environment(Path("configs/accelerate/fsdp.yaml"))
    killed = run(config, tmp_path / "two", 2, env={**env, "RLHF_CRASH_AT": "train.step:3"})
    assert killed.returncode != 0
    checkpoint = tmp_path / "two" / ".work" / "sft" / "trainer" / "checkpoint-2"
    assert any(checkpoint.rglob("*.distcp")), "the checkpoint is not sharded"
    resumed = run(config, tmp_path / "two", 2, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = run(config, tmp_path / "one", 2, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    (metrics_r, weights_r), (metrics_u, weights_u) = (
        outcome(tmp_path / "two", "sft"),
        outcome(tmp_path / "one", "sft"),
    )
    # transformers restarts its running mean of the training loss on resume (as tests/test_resume.py notes)
    metrics_r.pop("train_loss"), metrics_u.pop("train_loss")
    assert_close(metrics_r, metrics_u)
    for name in weights_u:
        assert torch.allclose(weights_r[name], weights_u[name], rtol=TOLERANCE, atol=TOLERANCE), name
