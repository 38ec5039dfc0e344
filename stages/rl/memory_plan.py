"""The RL stage's memory plan per process, printed before the first step: for each model its weights,
gradients, optimizer state and an activation estimate for the configured micro-batch, under the chosen
engine. On a GPU a plan that cannot fit is refused with the smallest change that would make it fit.

The counts are exact (parameters, bytes per element, AdamW's two float32 moments, 1/N of each under
`fsdp2`); activations are an estimate (the saved tensors of a decoder layer's backward, the logits of the
micro-batch): they set an order of magnitude, not a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

GiB = 2**30
ADAM_MOMENTS = 2  # AdamW keeps exp_avg and exp_avg_sq, in float32, for every trained parameter
# Tensors a decoder layer saves for backward, per token, in units of hidden_size elements (attention
# inputs and outputs, the MLP's wider activations counted through intermediate_size separately).
SAVED_PER_TOKEN_HIDDEN = 10
SAVED_PER_TOKEN_INTERMEDIATE = 3


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know of one model."""

    name: str
    parameters: int
    trained: int  # parameters the optimizer updates (all; LoRA: the adapter; frozen models: 0)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int  # 0 for a scalar head (value and reward models): no logits


@dataclass(frozen=True)
class Entry:
    name: str
    weights: float  # bytes on this process
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def model_entry(
    shape: ModelShape, weight_bytes: int, shards: int, rows: int, tokens_per_row: int, compute_bytes: int
) -> Entry:
    """One model's bytes on one process. `shards`: processes its weights, gradients and optimizer state are
    split over (1 replicated). Activations are for `rows` sequences of `tokens_per_row` tokens in one forward
    and backward (0 rows: a frozen model, whose no-grad forwards keep only one layer's tensors)."""
    weights = shape.parameters * weight_bytes / shards
    gradients = shape.trained * 4 / shards
    optimizer = shape.trained * 4 * ADAM_MOMENTS / shards
    tokens = rows * tokens_per_row
    per_layer = (
        SAVED_PER_TOKEN_HIDDEN * shape.hidden_size + SAVED_PER_TOKEN_INTERMEDIATE * shape.intermediate_size
    )
    saved = tokens * per_layer * shape.num_layers * compute_bytes if shape.trained else 0
    logits = tokens * shape.vocab_size * 4 * 2  # float32 logits and their log-softmax
    return Entry(shape.name, weights, gradients, optimizer, saved + logits)


def shape_of(name: str, model: torch.nn.Module, trained: bool) -> ModelShape:
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config

    def get(key: str, default: int = 0) -> int:
        return int(getattr(config, key, default) or default)

    has_logits = hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None
    vocab = get("vocab_size") if has_logits else 0
    return ModelShape(
        name,
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad) if trained else 0,
        get("hidden_size"),
        get("intermediate_size", 4 * get("hidden_size")),
        get("num_hidden_layers"),
        vocab,
    )


def render(entries: list[Entry], world: int, engine: str) -> str:
    header = f"memory plan per process ({world} process{'es' if world > 1 else ''}, engine {engine}), GiB:"
    lines = [header, f"  {'model':<14}{'weights':>9}{'grads':>9}{'optim':>9}{'activ.':>9}{'total':>9}"]
    for e in [*entries, total_entry(entries)]:
        values = (e.weights, e.gradients, e.optimizer, e.activations, e.total)
        lines.append(f"  {e.name:<14}" + "".join(f"{v / GiB:>9.3f}" for v in values))
    return "\n".join(lines)


def total_entry(entries: list[Entry]) -> Entry:
    return Entry(
        "total",
        sum(e.weights for e in entries),
        sum(e.gradients for e in entries),
        sum(e.optimizer for e in entries),
        sum(e.activations for e in entries),
    )


@dataclass(frozen=True)
class Setting:
    """The knobs a plan depends on, and that a refusal may suggest turning."""

    world: int
    sharded: bool
    micro_rows: int  # sequences per forward/backward on this process
    tokens_per_row: int
    weight_bytes: int  # 4 float32, 2 bfloat16
    compute_bytes: int  # 2 with mixed_precision bf16
    lora: bool


def plan(shapes: list[ModelShape], setting: Setting, lora_fraction: float = 0.01) -> list[Entry]:
    """Entries for every model. With `setting.lora` and shapes of full fine-tuning, trained models train
    `lora_fraction` of their parameters (how a suggestion to turn LoRA on is priced)."""
    entries = []
    for shape in shapes:
        if setting.lora and shape.trained == shape.parameters:
            shape = replace(shape, trained=int(shape.parameters * lora_fraction))
        shards = setting.world if setting.sharded else 1
        rows = setting.micro_rows if shape.trained else 1
        bytes_per = setting.weight_bytes, shards, rows, setting.tokens_per_row, setting.compute_bytes
        entries.append(model_entry(shape, *bytes_per))
    return entries


def smallest_fitting_change(shapes: list[ModelShape], setting: Setting, budget: float) -> str | None:
    """The first of the usual remedies, in this order, whose plan fits in `budget` bytes: a quarter of the
    micro-batch, LoRA, no separate value model (`shared_value_head`), sharding; None if none alone does."""
    smaller = max(1, setting.micro_rows // 4)
    without_value = [s for s in shapes if s.name != "value_model"]
    quarter = replace(setting, micro_rows=smaller)
    remedies = [
        (setting.micro_rows > 1, f"micro_batch_size: {smaller}", shapes, quarter),
        (not setting.lora, "lora: {enabled: true}", shapes, replace(setting, lora=True)),
        (without_value != shapes, "shared_value_head: true", without_value, setting),
        (not setting.sharded and setting.world > 1, "engine: fsdp2", shapes, replace(setting, sharded=True)),
    ]
    for applies, change, candidate_shapes, candidate in remedies:
        if applies and total_entry(plan(candidate_shapes, candidate)).total <= budget:
            return change
    return None


def refusal(shapes: list[ModelShape], setting: Setting, budget: float) -> str | None:
    """Why the plan cannot run on a device of `budget` bytes, with the smallest change that would fit; None
    when it fits."""
    needed = total_entry(plan(shapes, setting)).total
    if needed <= budget:
        return None
    change = smallest_fitting_change(shapes, setting, budget)
    advice = (
        f"the smallest change that fits: {change}"
        if change
        else "no single change fits: combine LoRA, engine: fsdp2 on more GPUs and a smaller micro_batch_size"
    )
    return (
        f"the memory plan needs {needed / GiB:.1f} GiB per process and the GPU has {budget / GiB:.1f} GiB; "
        f"{advice}."
    )
