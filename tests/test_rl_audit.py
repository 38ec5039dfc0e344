"""Regression tests for the findings of the outside numerical audit of the RL engine
(../shared/audits/rl-numerics.md): each test failed on the code the audit read (31f1406)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.model_building import build_causal_lm
from pipeline.models import save_pretrained
from pipeline.runner import run_standalone
from pipeline.stage_config import LoraConfig, ModelConfig
from pipeline.tokenizer_training import train_bpe_tokenizer
from stages.rl import algorithms
from stages.rl.advantages import RunningMeanBaseline
from stages.rl.experience import values_of
from stages.rl.kl import AdaptiveKLController
from stages.rl.models import build_policy, build_value_model
from stages.rl.rollout import batched_response_logprobs, left_pad, response_logits, sample, token_logprobs


def run_stage(kind: str, block: dict, out) -> dict:
    run_standalone(
        load_config(None, data={"threads": 2, "stages": {kind: {"kind": kind, **block}}}), kind, None, out
    )
    return json.loads((out / "rlhf_stage.json").read_text())


# ---------------------------------------------------------------- H1: saving never changes the live model
def test_a_lora_rl_run_with_weight_snapshots_keeps_training_its_adapter(tiny_run, tmp_path):
    """Snapshots merged the adapter into the live policy in place: the LoRA layers vanished at step 0 and
    step 1 failed. Now every snapshot saves a merged copy, and the adapter goes on learning."""
    block = {
        "policy": str(tiny_run / "sft"),
        "reward_model": None,
        "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
        "prompts": "demo:reviews/prompts",
        "total_episodes": 64,
        "batch_size": 16,
        "minibatch_size": 8,
        "ppo_epochs": 1,
        "lr": 5e-3,
        "max_new_tokens": 8,
        "lora": {"enabled": True, "r": 4, "alpha": 8},
        "eval_every": 1,
        "eval_prompts": "demo:reviews/eval_prompts",
        "eval_max_prompts": 8,
    }
    out = tmp_path / "rl"
    run_stage("rl", {**block, "algorithm": "reinforce"}, out)
    history = json.loads((out / "history.json").read_text())
    snapshots = json.loads((out / "snapshots.json").read_text())
    assert [s["step"] for s in snapshots] == [0, 1, 2, 3, 4]
    assert history[0]["kl"] == 0.0 and history[-1]["kl"] > 0.0
    assert snapshots[0]["kl"] == 0.0 and snapshots[-1]["kl"] > 0.0
    adapters = [load_file(out / s["path"] / "adapter" / "adapter_model.safetensors") for s in snapshots[1:]]
    for before, after in zip(adapters, adapters[1:]):  # the adapter changed between every two snapshots
        assert before.keys() == after.keys() and len(before) > 0
        assert any(not torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------- M1: fp32 master weights for bf16 checkpoints
@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_run, tmp_path_factory):
    """The tiny SFT policy stored in bfloat16, as most hub checkpoints are."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("bf16") / "sft-bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_run / "sft", dtype=torch.bfloat16)
    save_pretrained(model, AutoTokenizer.from_pretrained(tiny_run / "sft"), path)
    return path


def moved_fraction(before_dir, after_dir) -> float:
    """The fraction of the trunk's weights (shared keys, compared in float32) that training changed. Token
    embeddings are left out: the rows of tokens no batch contained get no gradient."""
    before, after = load_file(before_dir / "model.safetensors"), load_file(after_dir / "model.safetensors")
    shared = [k for k in before if k in after and "embed" not in k]
    moved = sum(int((before[k].float() != after[k].float()).sum()) for k in shared)
    return moved / sum(before[k].numel() for k in shared)


@pytest.mark.parametrize(
    "kind, block",
    [
        ("sft", {"data": "demo:reviews/sft", "max_steps": 3, "batch_size": 8}),
        ("reward", {"data": "demo:reviews/prefs", "max_steps": 3, "batch_size": 8}),
        ("dpo", {"data": "demo:reviews/prefs", "max_steps": 3, "batch_size": 8}),
        (
            "rl",
            {
                "reward_model": None,
                "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
                "prompts": "demo:reviews/prompts",
                "total_episodes": 32,
                "batch_size": 16,
                "minibatch_size": 16,
                "ppo_epochs": 1,
                "max_new_tokens": 6,
                "algorithm": "reinforce",
            },
        ),
    ],
)
def test_a_bf16_checkpoint_trains_with_float32_master_weights(bf16_checkpoint, tmp_path, kind, block):
    """Loaded in its stored bf16, an update of ~1e-6 rounded away for 98% of the weights (bf16 has 8 bits of
    mantissa). With float32 master weights (the default `dtype`) nearly every weight moves."""
    source = {"rl": "policy"}.get(kind, "init_from")
    out = tmp_path / kind
    run_stage(kind, {source: str(bf16_checkpoint), "lr": 1e-6, **block}, out)
    assert moved_fraction(bf16_checkpoint, out) > 0.9


def test_dtype_bfloat16_keeps_pure_bf16_weights_when_asked(bf16_checkpoint):
    from pipeline.models import load_model

    assert {p.dtype for p in load_model("AutoModelForCausalLM", str(bf16_checkpoint)).parameters()} == {
        torch.float32
    }
    pure = load_model("AutoModelForCausalLM", str(bf16_checkpoint), dtype="bfloat16")
    assert {p.dtype for p in pure.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- M2: no dropout in the update passes
@pytest.fixture(scope="module")
def tokenizer():
    from pipeline.demo import generate_split

    return train_bpe_tokenizer([r["text"] for r in generate_split("reviews", "corpus")[:300]], vocab_size=300)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("lora_dropout", [None, 0.3])
def test_the_first_update_ratio_is_one_with_dropout_in_the_config(tokenizer, tmp_path, family, lora_dropout):
    """Attention dropout read from the config (llama, qwen2) and LoRA dropout added after dropout was switched
    off kept the update pass stochastic: the PPO ratio was 1 +- 0.09 (or +- 0.39) before any update. The value
    model must be deterministic in training mode too."""
    torch.manual_seed(0)
    config = ModelConfig(
        family=family, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, dropout=0.1
    )
    path = tmp_path / family
    save_pretrained(build_causal_lm(config, tokenizer), tokenizer, path)
    lora = LoraConfig(enabled=lora_dropout is not None, r=4, alpha=8, dropout=lora_dropout or 0.0)
    policy = build_policy(str(path), lora)
    for name, weight in policy.named_parameters():
        if "lora_B" in name:  # as after some training: a zero B would hide LoRA dropout
            torch.nn.init.normal_(weight, std=0.5)
    queries = [
        tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("the food", "a long day at")
    ]
    query_ids, query_mask = left_pad(queries, tokenizer.pad_token_id, "cpu")
    rollout = sample(
        policy.eval(),
        query_ids,
        query_mask,
        8,
        1.0,
        [tokenizer.eos_token_id],
        tokenizer.pad_token_id,
        torch.Generator().manual_seed(0),
    )
    old_logprobs = batched_response_logprobs(policy, rollout, 1.0, 8)
    policy.train()
    logits = response_logits(policy, rollout.sequence_ids, rollout.sequence_mask, query_ids.shape[1])
    ratio = (token_logprobs(logits, rollout.response_ids, 1.0) - old_logprobs).exp()
    mask = rollout.response_mask.bool()
    assert (ratio[mask] - 1).abs().max() < 1e-5

    value_model = build_value_model(str(path), from_reward_model=False)
    torch.nn.init.normal_(value_model.score.weight)  # a zero head would hide a stochastic trunk
    assert torch.equal(values_of(value_model.eval(), rollout), values_of(value_model.train(), rollout))


# ---------------------------------------------------------------- M3 and L3: REINFORCE baselines
def reinforce(scores, baseline="batch", **kwargs):
    from types import SimpleNamespace

    rows = len(scores)
    batch = algorithms.ScoredBatch(
        torch.tensor(scores),
        kwargs.pop("kl", torch.zeros(rows, 3)),
        kwargs.pop("kl_coef", 0.0),
        torch.ones(rows, 3),
        torch.full((rows,), 2),
        torch.ones(rows),
        **kwargs,
    )
    cfg = SimpleNamespace(baseline=baseline, whiten_advantages=True)
    return algorithms.reinforce_baselines(batch, cfg).advantages[:, 0]


def test_a_running_baseline_is_not_re_centred_by_whitening():
    """Whitening subtracted the batch mean again, so a running baseline equalled the batch one to 6e-7.
    Scores 3, 4, 5 against an old baseline of -5: s - b = 8, 9, 10, whose unbiased std is 1."""
    running = RunningMeanBaseline(0.9)
    running.load_state_dict({"momentum": 0.9, "value": -5.0})
    advantages = reinforce([3.0, 4.0, 5.0], baseline="running", running=running)
    assert torch.allclose(advantages, torch.tensor([8.0, 9.0, 10.0]), atol=1e-6)
    batch = reinforce([3.0, 4.0, 5.0], baseline="batch")
    assert torch.allclose(batch, torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)


def test_the_greedy_baseline_is_remax_and_is_shaped_like_the_samples():
    """ReMax: A = r(sample) - r(greedy), both with the same KL term; scaled, not re-centred.
    Sampled scores 1, 2 with summed KL 0.5, 1; greedy 0.5, 3 with summed KL 0, 2; beta 1:
    rewards 0.5, 1 and 0.5, 1 -> A = 0, 0. With beta 0: 0.5, -1 / std(0.5, -1) = 0.4714, -0.9428."""
    plain = reinforce([1.0, 2.0], baseline="greedy", greedy_scores=torch.tensor([0.5, 3.0]))
    assert torch.allclose(plain, torch.tensor([0.4714045, -0.9428090]), atol=1e-6)
    kl = torch.tensor([[0.5, 0.0, 0.0], [0.25, 0.75, 0.0]])
    greedy_kl = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.5]])
    shaped = reinforce(
        [1.0, 2.0],
        kl=kl,
        kl_coef=1.0,
        baseline="greedy",
        greedy_scores=torch.tensor([0.5, 3.0]),
        greedy_kl=greedy_kl,
    )
    assert torch.allclose(shaped, torch.zeros(2), atol=1e-6)


def test_missing_eos_penalty_applies_to_sampled_and_greedy_responses_alike():
    from stages.rl.rewards import penalize_unfinished

    scores = penalize_unfinished(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 0.5)
    assert scores.tolist() == [1.0, 0.5]
    assert penalize_unfinished(torch.tensor([1.0]), torch.tensor([False]), None).tolist() == [1.0]


# ---------------------------------------------------------------- L1: padding cannot leak NaN into the KL
def test_a_non_finite_logprob_on_padding_leaves_the_kl_finite():
    from stages.rl.kl import masked_kl

    logprobs = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, -1.0, float("-inf")]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for kind in ("k1", "k2", "k3"):
        kl = masked_kl(logprobs, ref, mask, kind)
        assert torch.isfinite(kl).all() and kl[0, 2] == 0 and kl[1, 1:].eq(0).all()
    controller = AdaptiveKLController(0.1, 6.0, 100)
    controller.update(float(masked_kl(logprobs, ref, mask, "k1").sum(1).mean()), 8)
    assert torch.isfinite(torch.tensor(controller.value))
    assert masked_kl(logprobs, ref, mask, "k1").sum(1).tolist() == [0.5 - 1.0, 0.0]


# ---------------------------------------------------------------- L5: weights and an adapter in one folder
def test_a_policy_folder_with_weights_and_an_adapter_is_refused(tiny_run, tmp_path):
    """transformers would attach such an adapter at load time, and disabling "the" adapter for the KL
    reference would then switch it off too (TRL #3196): the reference would be the bare base."""
    import shutil

    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "policy"
    shutil.copytree(tiny_run / "sft", folder)
    base = AutoModelForCausalLM.from_pretrained(folder)
    get_peft_model(base, PeftLoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    assert (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file()
    with pytest.raises(UserError, match="adapter_config.json"):
        build_policy(str(folder), LoraConfig(enabled=True, r=4, alpha=8))
