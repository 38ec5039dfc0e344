"""The `lora:` block as peft's `LoraConfig`: what the Trainer stages pass TRL and what the RL stage wraps its
policy and value model with (an import of peft and nothing heavier, so the RL stage does not load the
Trainer)."""

from __future__ import annotations

from pipeline.stage_config import LoraConfig


def peft_config(lora: LoraConfig, task_type: str):
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig  # peft loads only when LoRA is on

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
