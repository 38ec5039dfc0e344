"""Supervised fine-tuning (TRL's SFTTrainer): on {"prompt","completion"} rows with loss on the completion
only, or on conversations ({"messages"}, or prompt and completion as message lists) through the tokenizer's
chat template, with loss on the assistant turns only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.chat import assistant_tokens
from pipeline.data import PROMPT_COMPLETION, check_sources, is_conversational
from pipeline.stage_config import LoraConfig, TrainingConfig, check_positive, check_source, input_field
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    HeldOutBefore,
    last_checkpoint,
    rows_tokenizer_and_model,
    save_trained,
    trainer_arguments,
    trl_trainer_kwargs,
    truncation,
    truncation_metrics,
)


@dataclass
class SFTStageConfig(TrainingConfig):
    init_from: str = input_field("pretrain")  # stage name, path or hub id of a causal LM
    data: str = ""
    max_length: int = 128
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self, "init_from")
        check_positive(self, "max_length")


Config = SFTStageConfig  # the stage registry's handle (stages/__init__.py)


def check(cfg: SFTStageConfig) -> None:
    """Validate the data up front, before any stage of the run trains."""
    check_sources(cfg.data, cfg.eval_data, PROMPT_COMPLETION, "SFT data")


def conversation_examples(rows: list[dict], tokenizer) -> list[dict[str, list[int]]]:
    """Conversational rows as token ids with `assistant_masks` (1 on the tokens that carry loss): every
    assistant turn of a `messages` row, the completion's assistant turns of a prompt/completion row. TRL
    takes such pre-tokenized rows as they are and builds its labels from the mask."""
    examples = []
    for row in rows:
        messages = row.get("messages") or row["prompt"] + row["completion"]
        first_trained = len(row["prompt"]) if "prompt" in row else 0
        ids, mask = assistant_tokens(tokenizer, messages, first_trained)
        examples.append({"input_ids": ids, "assistant_masks": mask})
    return examples


def run(ctx: StageContext) -> StageResult:
    import datasets
    from trl import SFTConfig, SFTTrainer

    cfg: SFTStageConfig = ctx.config
    train_rows, eval_rows, tokenizer, model = rows_tokenizer_and_model(
        cfg, ctx, PROMPT_COMPLETION, "SFT data", "AutoModelForCausalLM"
    )

    before = HeldOutBefore(ctx) if eval_rows else None
    args = SFTConfig(
        **trainer_arguments(cfg, ctx, before),
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    )
    if is_conversational(train_rows):
        train_rows = conversation_examples(train_rows, tokenizer)
        eval_rows = conversation_examples(eval_rows, tokenizer)
        lengths = [len(row["input_ids"]) for row in train_rows]
        metrics = truncation_metrics(lengths, cfg.max_length, ctx.name)
    else:
        metrics = truncation(train_rows, tokenizer, cfg.max_length, ctx.name, ["completion"])
    trainer = SFTTrainer(
        args=args,
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        **trl_trainer_kwargs(ctx, cfg, model, tokenizer, train_rows, "CAUSAL_LM", before),
    )
    train_loss = trainer.train(resume_from_checkpoint=last_checkpoint(ctx)).training_loss
    if before:
        metrics["eval_loss_before"] = before.metrics["eval_loss"]
    metrics["train_loss"] = train_loss
    if eval_rows:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    save_trained(trainer, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)
