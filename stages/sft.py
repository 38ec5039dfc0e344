"""Supervised fine-tuning on {"prompt","completion"} rows (TRL's SFTTrainer), loss on completions only."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config import LoraConfig, TrainingConfig, check_positive, check_source, input_field
from pipeline.data import PROMPT_COMPLETION, check_sources
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    ReliabilityCallback,
    evaluate_before_training,
    last_checkpoint,
    peft_config,
    rows_tokenizer_and_model,
    trainer_arguments,
    truncation,
)
from stages.outputs import save_with_adapter


@dataclass
class Config(TrainingConfig):
    init_from: str = input_field("pretrain")  # stage name, path or hub id of a causal LM
    data: str = ""
    max_length: int = 128
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self, "init_from")
        check_positive(self, "max_length")


def check(cfg: Config) -> None:
    """Validate the data up front, before any stage of the run trains."""
    check_sources(cfg.data, cfg.eval_data, PROMPT_COMPLETION, "SFT data")


def run(ctx: StageContext) -> StageResult:
    import datasets
    from trl import SFTConfig, SFTTrainer

    cfg: Config = ctx.config
    train_rows, eval_rows, tokenizer, model = rows_tokenizer_and_model(
        cfg, ctx, PROMPT_COMPLETION, "SFT data", "AutoModelForCausalLM"
    )

    args = SFTConfig(
        **trainer_arguments(cfg, ctx),
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        callbacks=[ReliabilityCallback(ctx.name, cfg.skip_nonfinite)],
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, "CAUSAL_LM"),
    )
    metrics = truncation(train_rows, tokenizer, cfg.max_length, ctx.name, ["completion"])
    if eval_rows:
        metrics["eval_loss_before"] = evaluate_before_training(trainer)["eval_loss"]
    metrics["train_loss"] = trainer.train(resume_from_checkpoint=last_checkpoint(ctx)).training_loss
    if eval_rows:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    save_with_adapter(trainer.model, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)
