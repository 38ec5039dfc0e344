"""End-to-end: every stage of a tiny pipeline trains for real, hands its checkpoint on, and is evaluated."""

from __future__ import annotations

import json

import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.runner import Runner


def manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def test_every_stage_finishes_and_the_evaluation_is_written(tiny_run):
    stages = manifest(tiny_run)["stages"]
    assert list(stages) == ["pretrain", "sft", "reward", "ppo"]
    for name, entry in stages.items():
        assert entry["status"] == "finished", name
        assert (tiny_run / name / "config.json").is_file(), name
        assert entry["versions"]["transformers"]
    assert stages["sft"]["inputs"] == {"init_from": str(tiny_run / "pretrain")}
    assert stages["ppo"]["inputs"] == {
        "policy": str(tiny_run / "sft"),
        "reward_model": str(tiny_run / "reward"),
    }

    metrics = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    samples = [json.loads(line) for line in (tiny_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 16 * 2  # two policies x 16 prompts x 2 samples
    for policy in ("sft", "ppo"):
        rows = [s for s in samples if s["policy"] == policy]
        gold = [s["rewards"]["gold"] for s in rows]
        summary = metrics["policies"][policy]["rewards"]["gold"]
        assert summary["samples"] == len(gold) and summary["n"] == 16  # n counts prompts, the resampled unit
        assert abs(summary["mean"] - sum(gold) / len(gold)) < 1e-9
        assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    # the baseline is its own KL reference: exactly zero
    assert metrics["policies"]["sft"]["kl_to_reference"]["mean"] == 0.0
    report = (tiny_run / "eval" / "report.md").read_text()
    assert "| reward: gold |" in report and (tiny_run / "eval" / "training_curves.png").is_file()


def test_rerunning_a_finished_run_trains_nothing(tiny_run, tiny_config_file):
    before = {n: (tiny_run / n / "model.safetensors").stat().st_mtime_ns for n in ("pretrain", "sft", "ppo")}
    ran = Runner(load_config(tiny_config_file), tiny_run).run()
    assert ran == []
    after = {n: (tiny_run / n / "model.safetensors").stat().st_mtime_ns for n in ("pretrain", "sft", "ppo")}
    assert before == after


def test_from_a_stage_reuses_the_earlier_stages(tiny_run, tiny_config_file, tmp_path):
    # copy the run so other tests keep theirs
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    kept = {n: (run / n / "model.safetensors").stat().st_mtime_ns for n in ("pretrain", "sft", "reward")}
    config = load_config(tiny_config_file, ["stages.ppo.total_episodes=32"])
    ran = Runner(config, run).run(start="ppo")
    assert ran == ["ppo"]
    assert kept == {
        n: (run / n / "model.safetensors").stat().st_mtime_ns for n in ("pretrain", "sft", "reward")
    }
    assert manifest(run)["stages"]["ppo"]["metrics"]["episodes"] == 32.0


def test_a_changed_config_reruns_that_stage_and_everything_downstream(tiny_run, tiny_config_file, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    runner = Runner(
        load_config(tiny_config_file, ["stages.reward.max_steps=2", "stages.ppo.total_episodes=32"]), run
    )
    assert runner.run() == ["reward", "ppo"]


def test_stage_command_runs_one_stage_on_any_checkpoint(tiny_run, tiny_config_file, tmp_path, capsys):
    out = tmp_path / "sft-alone"
    code = main(
        [
            "stage",
            "sft",
            "--config",
            str(tiny_config_file),
            "--init-from",
            str(tiny_run / "pretrain"),
            "--out",
            str(out),
            "stages.sft.max_steps=3",
        ]
    )
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert "eval_loss" in metrics
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert not (tmp_path / ".sft-alone.incomplete").exists()


def test_stage_command_refuses_an_input_that_names_a_stage(tiny_config_file, tmp_path, capsys):
    code = main(
        [
            "stage",
            "ppo",
            "--config",
            str(tiny_config_file),
            "--init-from",
            "x/y",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "takes 'reward_model' from stage 'reward'" in capsys.readouterr().err


def test_every_output_loads_with_plain_from_pretrained(tiny_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for name in ("pretrain", "sft", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(tiny_run / name)
        tokenizer = AutoTokenizer.from_pretrained(tiny_run / name)
        assert model.config.vocab_size == len(tokenizer)
        assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_run / "reward")
    assert reward.config.num_labels == 1


def test_eval_command_recomputes_the_same_numbers(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    old = json.loads((run / "eval" / "metrics.json").read_text())
    shutil.rmtree(run / "eval")
    assert main(["eval", "--run-dir", str(run)]) == 0
    assert "reward: gold" in capsys.readouterr().out
    new = json.loads((run / "eval" / "metrics.json").read_text())
    assert new["policies"] == old["policies"] and new["differences"] == old["differences"]


def test_resolved_config_is_saved_and_reloads(tiny_run):
    saved = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert saved["stages"]["ppo"]["kind"] == "rl"  # written as `kind: ppo`, saved as the kind it names
    assert load_config(tiny_run / "config.yaml").stages["sft"].max_steps == 40
