"""The RL family on one engine: each algorithm trains end to end and raises its reward; bad reward functions
stop the run naming themselves; a reward model with its own tokenizer scores the decoded text."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import run_standalone


def rl_block(tiny_run, **overrides) -> dict:
    block = {
        "kind": "rl",
        "policy": str(tiny_run / "sft"),
        "reward_model": None,
        "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
        "prompts": "demo:reviews/prompts",
        "total_episodes": 256,
        "batch_size": 32,
        "minibatch_size": 16,
        "ppo_epochs": 2,
        "lr": 2e-3,
        "max_new_tokens": 10,
        "kl_coef": 0.02,
    }
    return {**block, **overrides}


def run_rl(block: dict, out) -> dict:
    run_standalone(load_config(None, data={"stages": {"rl": block}}), "rl", None, out)
    return json.loads((out / "rlhf_stage.json").read_text())["metrics"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "grpo", "batch_size": 8, "group_size": 4},  # KL in the loss (k3), group-normalised
        {"algorithm": "rloo", "batch_size": 8, "group_size": 4},  # leave-one-out baseline
        {"algorithm": "reinforce", "baseline": "running"},
        {"algorithm": "reinforce", "baseline": "greedy"},  # ReMax
        {
            "algorithm": "ppo",
            "value_init": "policy",
            "kl_estimator": "k2",
            "adaptive_kl": True,
            "kl_target": 1.0,
        },
        {"algorithm": "ppo", "shared_value_head": True},  # one trunk for policy and value
        # and with LoRA: the head reads the adapted trunk, the reference is the adapter switched off
        {"algorithm": "ppo", "shared_value_head": True, "lora": {"enabled": True, "r": 8, "alpha": 16}},
        # a separate value model with LoRA too: its own adapter and a fully trained head
        {"algorithm": "ppo", "value_init": "policy", "lora": {"enabled": True, "r": 8, "alpha": 16}},
    ],
    ids=[
        "grpo",
        "rloo",
        "reinforce-running",
        "reinforce-greedy",
        "ppo-adaptive-kl",
        "ppo-shared-value-head",
        "ppo-shared-value-head-lora",
        "ppo-lora-value-model",
    ],
)
def test_each_algorithm_raises_its_reward(tiny_run, tmp_path, overrides):
    metrics = run_rl(rl_block(tiny_run, **overrides), tmp_path / "rl")
    # gold sentiment of an SFT policy trained on mixed reviews starts near 0 and is easy to push up
    assert metrics["reward_last"] > metrics["reward_first"] + 0.3, metrics
    history = json.loads((tmp_path / "rl" / "history.json").read_text())
    assert history[0]["kl"] == 0.0
    assert ("kl_loss" in history[0]) == (overrides["algorithm"] == "grpo")
    assert ("value_loss" in history[0]) == (overrides["algorithm"] == "ppo")


def test_the_kl_term_can_be_switched_off(tiny_run, tmp_path):
    block = rl_block(tiny_run, algorithm="rloo", batch_size=8, group_size=4, kl_coef=0.0, total_episodes=64)
    run_rl(block, tmp_path / "rl")
    history = json.loads((tmp_path / "rl" / "history.json").read_text())
    assert all(row["kl_coef"] == 0.0 for row in history) and history[-1]["kl"] > 0  # measured, not penalised


def reward_raises(prompts, completions, **kwargs):
    raise RuntimeError("the scoring service is down")


def reward_wrong_length(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def reward_nan(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("reward_raises", "raised RuntimeError: the scoring service is down"),
        ("reward_wrong_length", "returned 31 values for 32 completions"),
        ("reward_nan", "returned a non-finite or non-numeric value at index 0"),
    ],
)
def test_a_bad_reward_function_stops_the_run_naming_it(tiny_run, tmp_path, name, expected):
    spec = f"{__name__}:{name}"
    block = rl_block(tiny_run, reward_functions={spec: 1.0}, total_episodes=32)
    with pytest.raises(UserError) as info:
        run_rl(block, tmp_path / "rl")
    assert f"Reward function '{spec}'" in str(info.value) and expected in str(info.value)
    assert not (tmp_path / "rl").exists()


def test_a_reward_model_with_a_different_tokenizer_scores_the_decoded_text(tiny_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from pipeline.demo import generate_split
    from pipeline.models import save_pretrained
    from pipeline.tokenizer_training import train_bpe_tokenizer
    from reward_models.learned import LearnedRewardModel
    from stages.rl.rewards import build_reward_mix
    from stages.rl.rollout import left_pad, sample

    texts = [r["text"] for r in generate_split("reviews", "corpus")[:400]]
    other = train_bpe_tokenizer(texts, vocab_size=290)  # a different vocabulary from the policy's
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(other),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=other.pad_token_id,
    )
    save_pretrained(AutoModelForSequenceClassification.from_config(config), other, tmp_path / "rm")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_run / "sft")
    mix = build_reward_mix(str(tmp_path / "rm"), 1.0, {}, policy_tokenizer, "cpu", None, False)
    assert not mix.sources[0].same_tokenizer
    prompts = ["review of the blender :", "thoughts on the old kettle :"]
    ids, mask = left_pad(
        policy_tokenizer(prompts, add_special_tokens=False)["input_ids"], policy_tokenizer.pad_token_id, "cpu"
    )
    rollout = sample(
        AutoModelForCausalLM.from_pretrained(tiny_run / "sft"),
        ids,
        mask,
        8,
        1.0,
        [policy_tokenizer.eos_token_id],
        policy_tokenizer.pad_token_id,
        torch.Generator().manual_seed(0),
    )
    completions = policy_tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    scored = mix.score(rollout, prompts, completions, policy_tokenizer.eos_token_id)
    expected = LearnedRewardModel.load(str(tmp_path / "rm")).score_texts(prompts, completions)
    assert torch.allclose(scored["reward_model"], expected)

    # and the RL stage trains against it (the value head must then start from the policy)
    block = rl_block(
        tiny_run,
        reward_model=str(tmp_path / "rm"),
        reward_functions={},
        total_episodes=32,
        value_init="policy",
    )
    assert run_rl(block, tmp_path / "rl")["steps"] == 1.0
    with pytest.raises(UserError, match="set value_init: policy"):
        run_rl({**block, "value_init": "reward_model"}, tmp_path / "rl2")


def test_k1_is_refused_as_a_kl_loss_term_and_k3_is_the_default_there():
    from pipeline.errors import ConfigError

    base = {
        "kind": "rl",
        "policy": "a/b",
        "reward_model": "c/d",
        "prompts": "demo:reviews/prompts",
        "algorithm": "grpo",
        "group_size": 4,
    }
    assert load_config(None, data={"stages": {"rl": base}}).stages["rl"].kl_estimator == "k3"
    assert (
        load_config(None, data={"stages": {"rl": {**base, "algorithm": "rloo"}}}).stages["rl"].kl_estimator
        == "k1"
    )
    with pytest.raises(ConfigError, match="k1 cannot be a loss term"):
        load_config(None, data={"stages": {"rl": {**base, "kl_estimator": "k1"}}})


def test_the_shared_value_head_reads_the_policy_trunk_without_changing_its_logits(tiny_run):
    """One forward gives the policy's own logits (what the causal LM computes, to float rounding: the output
    layer runs on fewer rows) and the values."""
    from pipeline.models import load_model
    from stages.rl.models import SharedValueHead
    from stages.rl.rollout import response_logits, response_logits_and_values

    policy = load_model("AutoModelForCausalLM", str(tiny_run / "sft")).eval()
    head = SharedValueHead(policy.config.hidden_size)
    torch.nn.init.normal_(head.score.weight)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 7, 8, 9, 11]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        logits, values = response_logits_and_values(policy, head, ids, mask, width=3)
        expected = response_logits(policy, ids, mask, query_length=3)
        hidden = policy.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0)
    assert values.shape == (2, 3)
    assert torch.allclose(values[0], head(hidden[0, 2:5]), atol=1e-5)  # V(s_t) read at the token before t
    assert torch.equal(SharedValueHead(8)(torch.randn(2, 3, 8)), torch.zeros(2, 3))  # starts at zero


def test_shared_value_head_is_ppo_only_and_excludes_value_init():
    from pipeline.errors import ConfigError

    base = {"kind": "rl", "policy": "a/b", "reward_model": "c/d", "prompts": "demo:reviews/prompts"}
    config = load_config(None, data={"stages": {"rl": {**base, "shared_value_head": True}}})
    assert config.stages["rl"].shared_value_head
    with pytest.raises(ConfigError, match="shared_value_head is PPO's"):
        load_config(
            None, data={"stages": {"rl": {**base, "shared_value_head": True, "algorithm": "reinforce"}}}
        )
    with pytest.raises(ConfigError, match="Remove one of the two keys"):
        load_config(
            None, data={"stages": {"rl": {**base, "shared_value_head": True, "value_init": "policy"}}}
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"algorithm": "ppo", "value_init": "policy"},  # policy and value losses, token means
        {"algorithm": "gspo", "batch_size": 8, "group_size": 4},  # sequence means
        {"algorithm": "dr_grpo", "batch_size": 8, "group_size": 4, "kl_coef": 0.05},  # constant normaliser
    ],
    ids=["ppo", "gspo", "dr_grpo"],
)
def test_micro_batches_accumulate_to_the_same_update(tiny_run, tmp_path, overrides):
    """Forward/backward in micro-batches of 3 rows (not dividing the minibatch of 16), gradients accumulated:
    the same training as whole minibatches, to float rounding."""
    from safetensors.torch import load_file

    block = rl_block(tiny_run, total_episodes=64, **overrides)
    whole = run_rl(block, tmp_path / "whole")
    micro = run_rl({**block, "micro_batch_size": 3}, tmp_path / "micro")
    for key in ("reward_first", "reward_last", "kl_last"):
        assert micro[key] == pytest.approx(whole[key], abs=1e-4), key
    ours, theirs = (
        load_file(tmp_path / "micro" / "model.safetensors"),
        load_file(tmp_path / "whole" / "model.safetensors"),
    )
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-4


def test_with_lora_the_value_model_trains_an_adapter_and_its_head_only(tiny_run):
    from pipeline.stage_config import LoraConfig
    from stages.rl.models import build_value_model

    model = build_value_model(str(tiny_run / "sft"), False, lora=LoraConfig(enabled=True, r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or ".score." in name for name in trainable)
    assert any(".score." in name for name in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.2 * sum(
        p.numel() for p in model.parameters()
    )
