"""Each stage moves its own metric the right way on a tiny model."""

from __future__ import annotations

import json

import pytest


def stage_metrics(run_dir, name):
    return json.loads((run_dir / name / "rlhf_stage.json").read_text())["metrics"]


def test_pretrain_lowers_held_out_loss(tiny_run):
    m = stage_metrics(tiny_run, "pretrain")
    assert m["eval_loss"] < m["eval_loss_before"] - 1.0  # from ~ln(vocab) = 5.95 at random init
    assert (tiny_run / "pretrain" / "tokenizer.json").is_file()  # the BPE tokenizer trained on the corpus


def test_sft_lowers_held_out_completion_loss(tiny_run):
    m = stage_metrics(tiny_run, "sft")
    assert m["eval_loss"] < m["eval_loss_before"] - 0.3


def test_reward_model_beats_chance_on_held_out_pairs(tiny_run):
    m = stage_metrics(tiny_run, "reward")
    assert m["eval_pairs"] == 200
    assert m["eval_accuracy"] > m["eval_accuracy_before"] + 0.05


def test_ppo_raises_the_reward_model_score(tiny_run):
    m = stage_metrics(tiny_run, "ppo")
    assert m["reward_last"] > m["reward_first"] + 0.2
    history = json.loads((tiny_run / "ppo" / "history.json").read_text())
    assert [row["step"] for row in history] == list(range(1, 9))
    assert history[0]["kl"] == 0.0  # first rollout comes from the unchanged policy


def test_pretrain_packs_documents_into_full_blocks():
    from pipeline.tokenizer_training import train_bpe_tokenizer
    from stages.pretrain import pack

    tokenizer = train_bpe_tokenizer(["a b c d e f g"] * 20, vocab_size=300)
    blocks = pack(["a b", "c d e"], tokenizer, block_size=3)
    stream = [i for b in blocks for i in b["input_ids"]]
    expected = tokenizer("a b")["input_ids"] + [tokenizer.eos_token_id] + tokenizer("c d e")["input_ids"]
    expected += [tokenizer.eos_token_id]
    assert all(len(b["input_ids"]) == 3 for b in blocks)
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 3


def test_rl_stage_writes_evaluation_snapshots_with_weights(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    block = {
        "kind": "rl",
        "policy": str(tiny_run / "sft"),
        "reward_model": str(tiny_run / "reward"),
        "prompts": "demo:reviews/prompts",
        "total_episodes": 64,
        "batch_size": 16,
        "minibatch_size": 8,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "eval_every": 2,
        "eval_prompts": "demo:reviews/eval_prompts",
        "eval_max_prompts": 8,
        "eval_gold": "reward_models.gold:reviews_gold",
    }
    out = tmp_path / "rl"
    run_standalone(load_config(None, data={"stages": {"rl": block}}), "rl", None, out)
    snapshots = json.loads((out / "snapshots.json").read_text())
    assert [s["step"] for s in snapshots] == [0, 2, 4]
    assert snapshots[0]["kl"] == 0.0  # the untouched policy is its own reference
    for snap in snapshots:
        assert set(snap["rewards"]) == {"reward_model", "gold"}
        assert AutoModelForCausalLM.from_pretrained(out / snap["path"]).config.model_type == "llama"
    history = json.loads((out / "history.json").read_text())
    assert all(0 < row["unique_fraction"] <= 1 for row in history)


def test_pretrain_without_held_out_data_and_with_a_tokenizer_only_folder(tiny_run, tmp_path):
    """eval_fraction 0 trains on every row and reports no held-out metric; `model.tokenizer` may name a folder
    holding only a tokenizer (no config.json)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    AutoTokenizer.from_pretrained(tiny_run / "pretrain").save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok" / "config.json").exists()
    block = {
        "kind": "pretrain",
        "data": "demo:reviews/corpus",
        "eval_fraction": 0.0,
        "max_steps": 2,
        "batch_size": 8,
        "block_size": 32,
        "model": {
            "hidden_size": 32,
            "num_heads": 2,
            "intermediate_size": 64,
            "tokenizer": str(tmp_path / "tok"),
        },
    }
    out = tmp_path / "pretrain"
    run_standalone(
        load_config(None, data={"threads": 1, "stages": {"pretrain": block}}), "pretrain", None, out
    )
    metrics = json.loads((out / "rlhf_stage.json").read_text())["metrics"]
    assert "train_loss" in metrics and not any(key.startswith("eval_") for key in metrics)
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize(
    "kind, block",
    [
        ("sft", {"data": "demo:reviews/sft"}),
        ("reward", {"data": "demo:reviews/prefs"}),
        ("dpo", {"data": "demo:reviews/prefs"}),
    ],
)
def test_micro_batches_with_gradient_accumulation_train_like_the_whole_batch(tiny_run, tmp_path, kind, block):
    """batch_size 16 as 4 micro-batches of 4 with accumulated gradients: the same optimizer steps."""
    from safetensors.torch import load_file

    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    base = {"kind": kind, "init_from": str(tiny_run / "sft"), "max_steps": 3, "batch_size": 16, "lr": 1e-3}
    outputs = {}
    for name, extra in (("whole", {}), ("micro", {"micro_batch_size": 4})):
        config = load_config(None, data={"threads": 2, "stages": {kind: {**base, **block, **extra}}})
        run_standalone(config, kind, None, tmp_path / name)
        outputs[name] = load_file(tmp_path / name / "model.safetensors")
    whole, micro = outputs["whole"], outputs["micro"]
    assert max(float((whole[k] - micro[k]).abs().max()) for k in whole) < 1e-4


def test_rows_longer_than_max_length_are_counted_and_warned_about(tiny_run, tmp_path, capsys):
    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    metrics = {}
    for max_length in (12, 256):
        block = {
            "kind": "sft",
            "init_from": str(tiny_run / "sft"),
            "data": "demo:reviews/sft",
            "max_steps": 1,
        }
        config = load_config(
            None, data={"threads": 2, "stages": {"sft": {**block, "max_length": max_length}}}
        )
        run_standalone(config, "sft", None, tmp_path / str(max_length))
        metrics[max_length] = stage_metrics(tmp_path, str(max_length))
    assert metrics[12]["truncated_rows"] > 0 and 0 < metrics[12]["truncated_fraction"] <= 1
    assert metrics[256]["truncated_rows"] == 0
    assert "are longer than max_length=12 tokens" in capsys.readouterr().err
