"""`rlhf compare`: the comparison config is built from the raw config and typed once, and a comparison on a
finished run trains only the algorithms' stages and evaluates each against the same baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_dict

from pipeline.cli import main
from pipeline.compare import comparison_data
from pipeline.config import load_config
from pipeline.errors import ConfigError


def test_each_algorithm_gets_the_rl_block_with_its_overrides_and_dpo_the_preference_data():
    raw = tiny_config_dict()
    raw["compare"] = {"rloo": {"group_size": 4, "batch_size": 8}}
    data = comparison_data(raw, ["rloo", "reinforce", "dpo"])
    assert list(data["stages"]) == ["pretrain", "sft", "reward", "rloo", "reinforce", "dpo"]
    assert "compare" not in data and "compare" in raw  # the caller's dict is left as it was
    rl = raw["stages"]["ppo"]
    assert data["stages"]["rloo"] == {
        **rl,
        "kind": "rl",
        "algorithm": "rloo",
        "group_size": 4,
        "batch_size": 8,
    }
    assert data["stages"]["reinforce"] == {**rl, "kind": "rl", "algorithm": "reinforce"}
    assert data["stages"]["dpo"] == {"kind": "dpo", "init_from": "sft", "data": "demo:reviews/prefs"}
    config = load_config(None, data=data)
    assert [config.stages[name].kind for name in ("rloo", "reinforce", "dpo")] == ["rl", "rl", "dpo"]
    assert config.stages["rloo"].algorithm == "rloo" and config.stages["rloo"].group_size == 4


@pytest.mark.parametrize(
    ("change", "algorithms", "message"),
    [
        (lambda raw: None, ["ppoo"], "Unknown algorithm(s) ppoo; choose from"),
        (
            lambda raw: raw["stages"].update(rl2={"kind": "rl"}),
            ["grpo"],
            "exactly one RL stage (kind rl); found 2",
        ),
        (lambda raw: raw["stages"].update(grpo={"kind": "sft"}), ["grpo"], "Stage name 'grpo' is taken"),
        (lambda raw: raw.update(compare=["grpo"]), ["grpo"], "'compare' must map an algorithm to a block"),
    ],
)
def test_a_comparison_it_cannot_build_is_refused(change, algorithms, message):
    raw = tiny_config_dict()
    change(raw)
    with pytest.raises(ConfigError) as error:
        comparison_data(raw, algorithms)
    assert message in str(error.value)


def test_compare_on_a_finished_run_trains_only_the_new_stages(tiny_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval", ".*"))
    config = tiny_config_dict()
    config["stages"]["ppo"].update(total_episodes=64)
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["compare", str(config_file), "--run-dir", str(run), "--algorithms", "reinforce"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    original = json.loads((tiny_run / "manifest.json").read_text())
    for stage in ("pretrain", "sft", "reward"):  # the same blocks: finished earlier, so not trained again
        assert manifest["stages"][stage]["finished_at"] == original["stages"][stage]["finished_at"]
    assert manifest["stages"]["reinforce"]["status"] == "finished"
    table = json.loads((run / "compare" / "compare.json").read_text())
    metrics = json.loads((run / "compare" / "reinforce" / "metrics.json").read_text())
    assert table["rows"]["reinforce"]["differences"] == metrics["differences"]
    # The evaluation read the stage's own record from its folder: its training metrics are in the report.
    assert metrics["training"]["stage"] == "reinforce" and metrics["training"]["episodes"] == 64
    assert "| reinforce |" in (run / "compare" / "compare.md").read_text()
    assert "reinforce" in capsys.readouterr().out
