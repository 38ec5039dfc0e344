"""Many nodes: `rlhf run --nnodes M --node-rank R --master-addr HOST`, tried as two "nodes" of one process
each on this machine (rendezvous on 127.0.0.1), and the check that every node sees the run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from test_distributed import assert_close, outcome, run, trainer_and_rl_blocks

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_nodes(config: dict, run_dirs: list, tmp_path) -> list[subprocess.CompletedProcess]:
    """One `rlhf run` per node, each with its own --run-dir (the same path on a shared filesystem)."""
    config_file = tmp_path / "nodes.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if k != "RLHF_CRASH_AT"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(config_file), "--run-dir", str(run_dir)]
            + ["--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port]
            + ["--dist-timeout", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, run_dir in enumerate(run_dirs)
    ]
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return results


def rl_config(tiny_run) -> dict:
    block = {k: v for k, v in trainer_and_rl_blocks(tiny_run)["ppo"].items() if k != "checkpoint_every"}
    return {"name": "nodes", "seed": 5, "threads": 1, "stages": {"ppo": block}}


def test_two_nodes_run_the_rl_stage_to_the_end_like_one_process(tiny_run, tmp_path):
    config = rl_config(tiny_run)
    nodes = launch_nodes(config, [tmp_path / "nodes"] * 2, tmp_path)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    manifest = json.loads((tmp_path / "nodes" / "manifest.json").read_text())
    assert manifest["stages"]["ppo"]["status"] == "finished"
    single = run(config, tmp_path / "one", 1)
    assert single.returncode == 0, single.stderr[-3000:]
    assert_close(outcome(tmp_path / "nodes", "ppo")[0], outcome(tmp_path / "one", "ppo")[0])


def test_a_node_that_cannot_see_the_run_directory_stops_every_node_before_any_work(tiny_run, tmp_path):
    # node 1 given another folder: what it sees when the run directory is not on a shared filesystem
    nodes = launch_nodes(rl_config(tiny_run), [tmp_path / "shared", tmp_path / "elsewhere"], tmp_path)
    assert [node.returncode for node in nodes] != [0, 0]
    assert "This process (process 1 on" in nodes[1].stderr
    assert "must be on a filesystem every node mounts at the same path" in nodes[1].stderr
    assert "Another process" in nodes[0].stderr
    assert not (tmp_path / "shared" / "ppo").exists()
