"""Where the RL stage's models live on the processes, and how their gradients meet (`engine`).

- `replicated`: every process holds whole models and gradients are summed by one flat all-reduce after
  each minibatch. The default, and the only choice that adds nothing on one CPU process.
- `fsdp2`: torch's `fully_shard` (FSDP2) shards every model over the processes, one unit per decoder layer:
  the trained policy and value model (their gradients reduce-scattered, summed, in backward; the optimizer
  steps each process's shard) and the frozen reference and reward model (all-gathered layer by layer in
  their forward). Each process then holds about 1/N of every model's weights, gradients and optimizer
  state. The price is that every process must run every forward and backward the others run: decoding
  continues until all processes are done, and a process short of rows runs weight-0 micro-batches.

Sharded checkpoints are written with torch.distributed.checkpoint (stages/rl/checkpoint.py), and the stage's
output is a whole `from_pretrained` folder gathered from the shards (`save`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from pipeline import distributed
from pipeline.models import backbone, is_encoder_classifier, without_peft_wrapper
from reward_models.learned import LearnedRewardModel
from stages.outputs import save_sharded, save_with_adapter
from stages.rl.models import SharedValueHead


class Replicated:
    """Whole models on every process; gradients summed by hand (pipeline.distributed.sync_gradients)."""

    name, sharded = "replicated", False

    def prepare(self, models) -> None:
        """Place an RLModels' policy, reference, value model and learned reward models."""
        self.prepare_policy(models.policy)
        self.prepare_whole(models.reference)
        if isinstance(models.value_model, SharedValueHead):  # a head on the policy's last hidden state
            self.prepare_whole(models.value_model)
        else:
            self.prepare_scorer(models.value_model)
        for source in models.rewards.sources:
            if isinstance(source.scorer, LearnedRewardModel):
                model = source.scorer.model  # an encoder is read whole (its pooled first token)
                self.prepare_whole(model) if is_encoder_classifier(model) else self.prepare_scorer(model)

    def prepare_policy(self, policy: torch.nn.Module) -> None:
        pass

    def prepare_whole(self, model: torch.nn.Module | None) -> None:
        pass

    def prepare_scorer(self, model: torch.nn.Module | None) -> None:
        pass

    def optimizer(self, params: list, lr: float, device: torch.device) -> torch.optim.Optimizer:
        # fused: one kernel for every parameter instead of a Python loop over them (4x faster on CPU)
        return torch.optim.AdamW(params, lr=lr, eps=1e-5, fused=device.type in ("cpu", "cuda"))

    def sync_gradients(self, params: list) -> None:
        distributed.sync_gradients(params)

    def save(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
        """The stage's output folder (LoRA: merged weights and the adapter), written by the main process."""
        if distributed.is_main():
            save_with_adapter(model, tokenizer, out_dir)


class FSDP2(Replicated):
    """Every model sharded with FSDP2 (see the module docstring). `rebuild_policy` makes an unsharded copy
    of the policy on the main process, into which the gathered weights are loaded for saving."""

    name, sharded = "fsdp2", True

    def __init__(self, rebuild_policy: Callable[[], torch.nn.Module], bf16: bool):
        distributed.ensure_process_group()
        self.rebuild_policy = rebuild_policy
        # bf16: compute in bf16, keep float32 master weights and reduce gradients in float32
        self.mp_policy = MixedPrecisionPolicy(torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None

    def prepare_policy(self, policy: torch.nn.Module) -> None:
        """A causal LM is called whole (its forward gives logits): a unit per layer, the rest at the root."""
        self._shard([*decoder_layers(policy), policy])

    def prepare_whole(self, model: torch.nn.Module | None) -> None:
        """A model called whole (a frozen reference, an encoder reward model, the shared value head)."""
        if model is not None:
            self._shard([*decoder_layers(model), model])

    def prepare_scorer(self, model: torch.nn.Module | None) -> None:
        """A value or reward model is read through its trunk and its score head separately
        (pipeline.models.token_scores): each is a unit of its own, as is each layer."""
        if model is not None:
            self._shard([*decoder_layers(model), backbone(model), without_peft_wrapper(model).score])

    def _shard(self, units: list[torch.nn.Module]) -> None:
        for unit in units:  # innermost first: a unit's parameters are those no inner unit holds
            fully_shard(unit, mp_policy=self.mp_policy or MixedPrecisionPolicy())
        for unit in units:
            if isinstance(unit, FSDPModule):
                # gradients summed over processes, not averaged: each process's loss is already its part
                # of the global minibatch's (as with the replicated engine's all-reduce). Gloo has no
                # pre-multiplied sum, so the reduction is a plain sum.
                unit.set_gradient_divide_factor(1.0)
                unit.set_force_sum_reduction_for_comms(True)

    def optimizer(self, params: list, lr: float, device: torch.device) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, eps=1e-5)

    def sync_gradients(self, params: list) -> None:
        pass  # reduce-scattered in backward

    def save(self, model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
        """Gather the full weights (every process takes part), load them into an unsharded copy on the main
        process and save it as the replicated engine does."""
        save_sharded(model, tokenizer, out_dir, self.rebuild_policy)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, by the classes transformers names as never to be split across devices
    (`_no_split_modules`, e.g. LlamaDecoderLayer): FSDP's natural unit."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


ENGINE_CLASSES = {engine.name: engine for engine in (Replicated, FSDP2)}
ENGINES = tuple(ENGINE_CLASSES)


def is_sharded(name: str) -> bool:
    """Whether engine `name` shards the models, so that every process must take part in each forward."""
    return ENGINE_CLASSES[name].sharded


def make_engine(name: str, rebuild_policy: Callable[[], torch.nn.Module], bf16: bool) -> Replicated:
    return FSDP2(rebuild_policy, bf16) if name == "fsdp2" else Replicated()
