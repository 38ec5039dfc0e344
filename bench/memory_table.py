"""Per-GPU memory of PPO (policy, reference, value model, reward model) from the RL stage's memory plan,
for Qwen2-shaped models built from their published config on the meta device (no download, no weights):
model size x engine x LoRA, 8 GPUs, fp32 master weights with bf16 compute, micro-batch 4 x 1024 tokens.

    python bench/memory_table.py        # prints the markdown table in docs/distributed.md
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

from stages.rl.memory_plan import GiB, Setting, plan, shape_of, total_entry

SIZES = {  # Qwen2.5-0.5B / -7B structure: hidden, layers, heads, kv heads, intermediate, vocab, tied
    "0.5B": Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "7B": Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
}  # fmt: skip
LORA_FRACTION = 0.005  # r=16 on every linear layer of a 7B model trains about 0.5% of its parameters


def scalar_head(config: Qwen2Config) -> Qwen2Config:
    config = copy.deepcopy(config)
    config.num_labels = 1
    return config


def shapes(config: Qwen2Config, lora: bool) -> list:
    with torch.device("meta"):
        policy = AutoModelForCausalLM.from_config(config)
        scorer = AutoModelForSequenceClassification.from_config(scalar_head(config))
    out = [shape_of("policy", policy, True)]
    if not lora:  # with LoRA the reference is the policy with its adapter off
        out.append(shape_of("reference", policy, False))
    return [*out, shape_of("value_model", scorer, True), shape_of("reward_model", scorer, False)]


def main() -> None:
    print(
        "| model | engine (8 GPUs) | LoRA | weights | gradients | optimizer | activations | total per GPU |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for size, config in SIZES.items():
        for sharded in (False, True):
            for lora in (False, True):
                setting = Setting(8, sharded, 4, 1024, weight_bytes=4, compute_bytes=2, lora=lora)
                total = total_entry(plan(shapes(config, lora), setting, lora_fraction=LORA_FRACTION))
                cells = [total.weights, total.gradients, total.optimizer, total.activations, total.total]
                engine = "fsdp2" if sharded else "replicated"
                print(f"| {size} | {engine} | {'yes' if lora else 'no'} | "
                      + " | ".join(f"{value / GiB:.1f} GiB" for value in cells) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
