"""The DPO stage: completion log-probabilities worked by hand, and a tiny run that learns the preferences."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stages.dpo import implicit_reward_margins, preference_accuracy, sequence_logprobs, tokenize_pair

PREFS = "demo:reviews/prefs"


def dpo_config(**overrides):
    from pipeline.config import load_config

    block = {"kind": "dpo", "data": PREFS, "max_steps": 12, "batch_size": 16, "lr": 2e-3}
    block.update(eval_fraction=0.1, log_every=100, **overrides)
    # One thread: the steps are tiny, and on a busy machine a second thread mostly waits (10x slower seen).
    return load_config(None, data={"seed": 0, "threads": 1, "stages": {"dpo": block}})


@pytest.fixture(autouse=True)
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_sequence_logprobs_sums_completion_tokens_predicted_one_position_earlier():
    # Vocabulary of 2. Position 0 predicts (1/2, 1/2), position 1 predicts (3/4, 1/4); position 2 predicts
    # nothing that is scored. Row 0 = [prompt 0 | completion 1, 0]: log(1/2) + log(3/4) = log(3/8).
    # Row 1 has a one-token completion [1] and then padding, whose -inf logits must not leak into the sum.
    logits = torch.tensor(
        [
            [[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]],
            [[0.0, 0.0], [-math.inf, -math.inf], [-math.inf, -math.inf]],
        ]
    )
    input_ids = torch.tensor([[0, 1, 0], [0, 1, 0]])
    completion_mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    result = sequence_logprobs(logits, input_ids, completion_mask)
    assert torch.allclose(result, torch.tensor([math.log(3 / 8), math.log(1 / 2)]))


def test_implicit_reward_margins_and_accuracy_with_ties_counted_half():
    reference = (torch.tensor([-5.0, -5.0, -5.0, -5.0]), torch.tensor([-6.0, -6.0, -6.0, -6.0]))
    policy = (torch.tensor([-4.0, -5.0, -5.0, -4.0]), torch.tensor([-6.0, -6.0, -5.0, -7.0]))
    # β·((π_c - ref_c) - (π_r - ref_r)) with β = 0.1: (1 - 0), (0 - 0), (0 - 1), (1 - -1) -> 0.1, 0, -0.1, 0.2
    margins = implicit_reward_margins(policy, reference, beta=0.1)
    assert torch.allclose(margins, torch.tensor([0.1, 0.0, -0.1, 0.2]))
    assert preference_accuracy(margins) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert preference_accuracy(implicit_reward_margins(reference, reference, beta=0.1)) == 0.5


def test_tokenize_pair_follows_trl_layout(tiny_run):
    from pipeline.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_run / "sft"))
    prompt, completion = "thoughts on the old kettle :", " the cord seems amazing ."
    ids, mask = tokenize_pair(tokenizer, prompt, completion, max_length=128)
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    assert ids == tokenizer(text=prompt + completion + tokenizer.eos_token)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and ids[-1] == tokenizer.eos_token_id  # EOS is scored
    assert mask == [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    assert tokenize_pair(tokenizer, prompt, completion, max_length=len(prompt_ids) + 2) == (
        ids[: len(prompt_ids) + 2],
        mask[: len(prompt_ids) + 2],
    )


def test_dpo_raises_held_out_implicit_reward_accuracy(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from pipeline.runner import run_standalone

    metrics = run_standalone(dpo_config(), "dpo", str(tiny_run / "sft"), tmp_path / "dpo")
    # Before any update the policy is its own reference, so every implicit-reward margin is 0 (chance).
    # The DPO loss -log σ(β·margin) pushes the margin of training pairs up; the held-out pairs come from the
    # same generator (positive vs negative wording of reviews), so a policy that has learned which words
    # are preferred ranks most held-out pairs correctly too.
    assert metrics["eval_accuracy_before"] == 0.5
    assert metrics["eval_accuracy"] > 0.55 and metrics["eval_margin"] > 0  # 200 pairs: 0.5 ± 0.035 by chance
    assert metrics["eval_pairs"] == 200
    AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "rlhf_stage.json").read_text())["kind"] == "dpo"


def test_dpo_with_lora_saves_adapter_and_merged_weights_that_reproduce_the_metric(tiny_run, tmp_path):
    from pipeline.data import PREFERENCE, load_rows, split_rows
    from pipeline.models import load_model, load_tokenizer
    from pipeline.runner import run_standalone
    from stages.dpo import preference_logprobs

    config = dpo_config(max_steps=8, lr=1e-2, lora={"enabled": True})
    metrics = run_standalone(config, "dpo", str(tiny_run / "sft"), tmp_path / "dpo")
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()
    assert metrics["eval_accuracy"] > metrics["eval_accuracy_before"]
    # The merged weights at the top level are the trained policy: scoring the held-out pairs with them
    # against the SFT model gives the accuracy the stage measured on the in-memory adapter model.
    _, eval_rows = split_rows(load_rows(PREFS, PREFERENCE), 0.1, 0)
    tokenizer = load_tokenizer(str(tmp_path / "dpo"))
    merged = load_model("AutoModelForCausalLM", str(tmp_path / "dpo"))
    reference = load_model("AutoModelForCausalLM", str(tiny_run / "sft"))
    margins = implicit_reward_margins(
        preference_logprobs(merged, tokenizer, eval_rows, 128),
        preference_logprobs(reference, tokenizer, eval_rows, 128),
        beta=0.1,
    )
    accuracy = preference_accuracy(margins)
    assert accuracy == pytest.approx(
        metrics["eval_accuracy"], abs=0.011
    )  # at most one pair flips on rounding
