"""The models an RL stage holds: the trainable policy, its frozen reference, and the value model (a separate
model, or a head on the policy's own trunk).

With LoRA the reference is the policy with its adapter disabled, so the base weights exist once. The policy
checkpoint comes with any earlier LoRA already merged in (see stages/outputs.save_with_adapter), which
makes "adapter disabled" the SFT policy and not the bare pretrained base.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from pipeline.models import backbone, is_peft, load_model, without_peft_wrapper
from pipeline.stage_config import LoraConfig
from stages.lora import peft_config


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """PPO's ratio must be exactly 1 before an update: dropout in the update passes would break that.

    Dropout comes as modules (`nn.Dropout`, LoRA's dropout) and as plain float attributes that attention
    reads when training (Llama and Qwen2: `dropout=0.0 if not self.training else self.attention_dropout`):
    both are zeroed. The config is left as it is, so saved models keep the family's settings."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def build_policy(
    source: str, lora: LoraConfig, trust_remote_code: bool = False, dtype: str = "float32"
) -> torch.nn.Module:
    policy = load_model("AutoModelForCausalLM", source, trust_remote_code, dtype)
    if lora.enabled:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config(lora, "CAUSAL_LM"))
    return disable_dropout(policy)  # after peft: its LoRA dropout modules exist only now


def build_reference(policy: torch.nn.Module) -> torch.nn.Module | None:
    """A frozen copy of the policy, or None when the policy's adapter can simply be switched off."""
    if is_peft(policy):
        return None
    return copy.deepcopy(policy).eval().requires_grad_(False)


@contextlib.contextmanager
def reference_mode(policy: torch.nn.Module, reference: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """Yields the module that computes reference log-probabilities."""
    if reference is not None:
        yield reference
    else:
        with policy.disable_adapter():
            yield policy


def build_value_model(
    source: str,
    from_reward_model: bool,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    lora: LoraConfig | None = None,
) -> torch.nn.Module:
    """A scalar head on a backbone: the reward model's (head included) or the policy's (head zeroed). With
    `lora` enabled the backbone trains a LoRA adapter and the head trains in full (peft's modules_to_save),
    as the policy does: no full trainable copy of the backbone, and optimizer state for the adapter only."""
    model = load_model("AutoModelForSequenceClassification", source, trust_remote_code, dtype, num_labels=1)
    if not from_reward_model:
        torch.nn.init.zeros_(model.score.weight)
    if lora is not None and lora.enabled:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(lora, "SEQ_CLS"))
    return disable_dropout(model)


class SharedValueHead(torch.nn.Module):
    """PPO's value head on the policy's last hidden state (`shared_value_head: true`): one forward and one
    backward serve the policy and the value, and no second model is held. Zero-initialised, like a value head
    started from the policy, so the first advantages are the returns themselves."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.score.weight)
        torch.nn.init.zeros_(self.score.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden).squeeze(-1)


def backbone_and_lm_head(policy: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The causal LM's trunk and output layer (through a peft wrapper: its adapters sit inside them)."""
    return backbone(policy), without_peft_wrapper(policy).get_output_embeddings()
