"""Rollout engines (stages/rl/generation.py): the same greedy tokens and log-probabilities as `hf`, sampling
distributions that fit the model's, the sampler-trainer mismatch measured every step and corrected by
truncated importance sampling, and where each step's time went."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import gold_rl_block

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import load_model, load_tokenizer
from stages.rl.generation import ENGINES, GenerationRequest, make_engine
from stages.rl.mismatch import mismatch_max, mismatch_metrics, mismatch_sums, truncated_is_weights
from stages.rl.noise import SamplingNoise
from stages.rl.rollout import batched_response_logprobs, left_pad

PROMPTS = ["The movie was", "I think this film", "Honestly, the plot", "What a"]
# float32 on CPU: the same logits computed with a cache (sampling) and without (the trainer's pass) differ in
# the last bits; ~1e-6 in log-probability is what that rounding gives
LOGPROB_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def policy(tiny_run):
    source = str(tiny_run / "sft")
    return load_tokenizer(source), load_model("AutoModelForCausalLM", source).eval()


def generate(
    policy, engine: str, prompts: list[str], greedy: bool, temperature: float = 0.7, tokens: int = 12
):
    tokenizer, model = policy
    ids, mask = left_pad(
        tokenizer(prompts, add_special_tokens=False)["input_ids"], tokenizer.pad_token_id, "cpu"
    )
    request = GenerationRequest(
        tokens,
        temperature,
        [tokenizer.eos_token_id],
        tokenizer.pad_token_id,
        greedy=greedy,
        noise=SamplingNoise(seed=1, step=1, first_row=0),
        seed=3,
    )
    return ENGINE_INSTANCES.setdefault(engine, make_engine(engine)).generate(model, ids, mask, request)


ENGINE_INSTANCES: dict = {}  # one per engine: the compiled engine's traced decode steps are kept


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_gives_the_greedy_tokens_of_hf(policy, engine):
    reference = generate(policy, "hf", PROMPTS, greedy=True)
    rollout = generate(policy, engine, PROMPTS, greedy=True)
    assert torch.equal(rollout.response_mask.sum(1), reference.response_mask.sum(1))
    width = reference.response_ids.shape[1]
    assert torch.equal(rollout.response_ids[:, :width], reference.response_ids)
    assert torch.equal(rollout.ended, reference.ended) and torch.equal(
        rollout.last_index, reference.last_index
    )


def test_the_compiled_engine_follows_the_weights_as_they_change(policy):
    """The compiled decode step reads the parameters, not a copy taken when it was traced: after an update
    (one that changes the greedy tokens) it still gives hf's greedy tokens."""
    _, model = policy
    before = generate(policy, "compiled", PROMPTS, greedy=True).response_ids  # traced with these weights
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        after = generate(policy, "hf", PROMPTS, greedy=True).response_ids
        assert not torch.equal(after, before)
        assert torch.equal(generate(policy, "compiled", PROMPTS, greedy=True).response_ids, after)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_the_sampler_log_probabilities_are_the_trainer_s_at_the_same_temperature(policy, engine):
    """What each engine says it drew each token with, against the trainer's own recomputation: the
    mismatch the RL stage reports. Both engines here run the same float32 weights, so it is rounding only."""
    rollout = generate(policy, engine, PROMPTS * 4, greedy=False, temperature=0.7)
    trainer = batched_response_logprobs(policy[1], rollout, 0.7, 64)
    mask = rollout.response_mask
    assert mask.sum() > 0
    assert float(mismatch_max(trainer, rollout.sampler_logprobs, mask)) < LOGPROB_TOLERANCE
    assert torch.equal(rollout.sampler_logprobs * (1 - mask), torch.zeros_like(mask))  # 0 on padding


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_samples_the_model_s_first_token_distribution(policy, engine):
    """800 samples of the first token after one prompt: the counts fit softmax(logits / T) (chi-square on the
    tokens expected at least 5 times, the rest pooled; p = 0.001; fixed seeds make the test deterministic)."""
    tokenizer, model = policy
    draws, temperature = 800, 1.3
    rollout = generate(policy, engine, [PROMPTS[0]] * draws, greedy=False, temperature=temperature, tokens=1)
    first = rollout.response_ids[:, 0]
    ids = torch.tensor([tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double() / temperature, -1)
    expected = probs * draws
    counts = torch.bincount(first, minlength=probs.numel()).double()
    big = expected >= 5
    observed_bins = torch.cat([counts[big], counts[~big].sum()[None]])
    expected_bins = torch.cat([expected[big], expected[~big].sum()[None]])
    chi_square = float(((observed_bins - expected_bins) ** 2 / expected_bins).sum())
    dof = len(observed_bins) - 1
    assert dof >= 5
    # Wilson-Hilferty: the chi-square quantile at p = 0.001 (z = 3.09)
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    assert chi_square < critical, (chi_square, critical, dof)


def test_mismatch_and_truncated_importance_weights_on_a_synthetic_mismatch():
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    sampler = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    # delta = trainer - sampler = [0.5, -1, 0]; k3 = e^delta - 1 - delta
    metrics = mismatch_metrics(
        mismatch_sums(trainer, sampler, mask), float(mismatch_max(trainer, sampler, mask))
    )
    assert metrics["mismatch/logprob_mean"] == pytest.approx(0.5)  # (0.5 + 1 + 0) / 3
    assert metrics["mismatch/logprob_max"] == pytest.approx(1.0)
    k3 = (math.exp(0.5) - 1.5) + (math.exp(-1.0) - 1 + 1.0)  # 0.148721 + 0.367879
    assert metrics["mismatch/kl"] == pytest.approx(k3 / 3)  # 0.172200
    # weights min(pi_trainer / pi_sampler, cap): e^0.5 = 1.6487 capped to 1.5, e^-1 = 0.3679, 1; padding 1
    weights = truncated_is_weights(trainer, sampler, mask, cap=1.5)
    assert weights[0].tolist() == pytest.approx([1.5, math.exp(-1.0), 1.0, 1.0])


def test_truncated_importance_weights_scale_each_token_s_policy_gradient_term():
    """The policy loss with weights w is the token mean of w * (the unweighted per-token terms)."""
    from stages.rl.losses import aggregate, ppo_clip

    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0, 0.5]])
    mask = torch.ones(1, 3)
    terms = ppo_clip(logprobs, logprobs.detach(), advantages, mask, 0.2, 0.2)  # ratio 1: terms = -A
    weights = torch.tensor([[1.5, 0.25, 1.0]])
    loss = aggregate(terms.per_token * weights, mask, "token-mean", 3.0, 1.0, 3)
    assert loss.item() == pytest.approx(-(1.5 * 1.0 + 0.25 * -2.0 + 1.0 * 0.5) / 3)  # -0.5
    loss.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-1.5 / 3, 0.5 / 3, -0.5 / 3])  # -w * A / 3


def run_rl(tiny_run, tmp_path, **overrides) -> list[dict]:
    block = gold_rl_block(
        kind="rl", algorithm="grpo", policy=str(tiny_run / "sft"), temperature=0.7, **overrides
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "engines", "seed": 3, "stages": {"grpo": block}}))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    return json.loads((tmp_path / "run" / "grpo" / "history.json").read_text())


def test_the_rl_stage_reports_mismatch_and_timings_every_step(tiny_run, tmp_path):
    hf = run_rl(tiny_run, tmp_path / "hf")
    paged = run_rl(tiny_run, tmp_path / "paged", rollout={"engine": "paged"})
    compiled = run_rl(tiny_run, tmp_path / "compiled", rollout={"engine": "compiled"})
    for history in (hf, paged, compiled):
        assert len(history) == 2
        for row in history:
            assert 0 <= row["mismatch/logprob_mean"] <= row["mismatch/logprob_max"] < LOGPROB_TOLERANCE
            assert abs(row["mismatch/kl"]) < LOGPROB_TOLERANCE
            parts = row["time/generate_s"] + row["time/score_s"] + row["time/update_s"]
            assert 0 < parts <= row["time/step_s"] * 1.001
            assert row["generate_share"] == pytest.approx(row["time/generate_s"] / row["time/step_s"])
            tokens = row["response_length"] * 16  # 4 prompts x 4 samples
            assert row["generate_tokens_per_s"] == pytest.approx(tokens / row["time/generate_s"])


def test_a_rollout_engine_that_needs_a_whole_model_is_refused_with_a_sharded_engine():
    block = gold_rl_block(
        kind="rl", algorithm="grpo", policy="x", engine="fsdp2", rollout={"engine": "paged"}
    )
    with pytest.raises(ConfigError, match="engine 'paged' generates with a whole model: it needs engine"):
        load_config(None, data={"name": "x", "stages": {"grpo": block}})
    with pytest.raises(ConfigError, match="Did you mean 'paged'"):
        load_config(
            None,
            ["stages.grpo.rollout.engine=pagd"],
            data={"name": "x", "stages": {"grpo": {**block, "engine": "replicated"}}},
        )


def test_the_config_offers_exactly_the_engines_there_are():
    """pipeline/config.py names the engines without importing the stages (the layer rule); this keeps the
    two lists one."""
    from pipeline.stage_config import ROLLOUT_ENGINES

    assert sorted(ROLLOUT_ENGINES) == sorted(ENGINES)
