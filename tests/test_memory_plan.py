"""The RL stage's memory plan: each model's bytes per process, by hand, and the change a refusal suggests."""

from __future__ import annotations

import pytest

from stages.rl.memory_plan import (
    GiB,
    ModelShape,
    Setting,
    model_entry,
    plan,
    refusal,
    smallest_fitting_change,
)

POLICY = ModelShape("policy", 1000, 1000, hidden_size=8, intermediate_size=16, num_layers=2, vocab_size=10)


def test_a_trained_model_entry_by_hand():
    entry = model_entry(POLICY, weight_bytes=4, shards=2, rows=3, tokens_per_row=5, compute_bytes=4)
    assert entry.weights == 1000 * 4 / 2
    assert entry.gradients == 1000 * 4 / 2
    assert entry.optimizer == 1000 * 4 * 2 / 2  # AdamW's two float32 moments
    # 15 tokens x (10 x 8 + 3 x 16) saved elements per layer x 2 layers x 4 bytes, plus float32 logits and
    # their log-softmax: 15 x 10 x 4 x 2
    assert entry.activations == 15 * 128 * 2 * 4 + 15 * 10 * 8
    assert entry.total == 2000 + 2000 + 4000 + 16560


def test_a_frozen_model_has_weights_only_and_lora_prices_a_small_adapter():
    reference = ModelShape("reference", 1000, 0, 8, 16, 2, 10)
    setting = Setting(
        world=2, sharded=False, micro_rows=4, tokens_per_row=5, weight_bytes=2, compute_bytes=2, lora=True
    )
    policy, frozen = plan([POLICY, reference], setting, lora_fraction=0.01)
    assert frozen.gradients == frozen.optimizer == 0 and frozen.weights == 2000
    assert policy.gradients == 10 * 4 and policy.optimizer == 10 * 8  # 1% of the parameters trained


def test_the_smallest_change_that_fits_is_suggested_in_order():
    big = ModelShape("policy", 10 * GiB // 4, 10 * GiB // 4, 4096, 11008, 32, 32000)  # ~10 GiB of float32
    value = ModelShape("value_model", 10 * GiB // 4, 10 * GiB // 4, 4096, 11008, 32, 0)
    setting = Setting(
        world=8, sharded=False, micro_rows=1, tokens_per_row=512, weight_bytes=4, compute_bytes=2, lora=False
    )
    # full fine-tuning of both: 2 x (10 weights + 10 gradients + 20 optimizer) GiB plus activations
    assert refusal([big, value], setting, budget=200 * GiB) is None
    assert smallest_fitting_change([big, value], setting, budget=30 * GiB) == "lora: {enabled: true}"
    assert smallest_fitting_change([big, value], setting, budget=16 * GiB) == "engine: fsdp2"
    message = refusal([big, value], setting, budget=1 * GiB)
    assert message.startswith("the memory plan needs") and "no single change fits" in message


@pytest.mark.parametrize("rows, expected", [(16, "micro_batch_size: 4"), (1, None)])
def test_a_smaller_micro_batch_comes_first_when_activations_are_the_problem(rows, expected):
    setting = Setting(
        world=1,
        sharded=False,
        micro_rows=rows,
        tokens_per_row=2048,
        weight_bytes=4,
        compute_bytes=4,
        lora=True,
    )
    small = ModelShape("policy", 1000, 10, 4096, 11008, 32, 150000)
    fits = plan([small], Setting(1, False, 4, 2048, 4, 4, True))[0].total
    assert smallest_fitting_change([small], setting, budget=fits * 1.01) == expected
