"""Reward model on {"prompt","chosen","rejected"} pairs (TRL's RewardTrainer); reports held-out accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data import PREFERENCE, check_sources
from pipeline.stage_config import (
    LoraConfig,
    TrainingConfig,
    check_at_least,
    check_positive,
    check_source,
    input_field,
)
from reward_models.learned import LearnedRewardModel
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    last_checkpoint,
    rows_tokenizer_and_model,
    save_trained,
    trainer_arguments,
    trl_trainer_kwargs,
    truncation,
)


@dataclass
class RewardStageConfig(TrainingConfig):
    init_from: str = input_field("sft")  # backbone: by default the SFT policy
    data: str = ""
    max_length: int = 128
    center_rewards_coefficient: float | None = 0.01  # keeps scores near 0, so PPO's KL penalty stays in scale
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self, "init_from")
        check_positive(self, "max_length")
        check_at_least(self, 0, "center_rewards_coefficient")


Config = RewardStageConfig  # the stage registry's handle (stages/__init__.py)


def pairwise_accuracy(scorer: LearnedRewardModel, rows: list[dict]) -> float:
    prompts = [r["prompt"] for r in rows]
    chosen = scorer.score_texts(prompts, [r["chosen"] for r in rows])
    rejected = scorer.score_texts(prompts, [r["rejected"] for r in rows])
    return (chosen > rejected).float().mean().item()


def check(cfg: RewardStageConfig) -> None:
    """Validate the data up front, before any stage of the run trains."""
    check_sources(cfg.data, cfg.eval_data, PREFERENCE, "preference data")


def run(ctx: StageContext) -> StageResult:
    from trl import RewardConfig, RewardTrainer

    cfg: RewardStageConfig = ctx.config
    train_rows, eval_rows, tokenizer, model = rows_tokenizer_and_model(
        cfg, ctx, PREFERENCE, "preference data", "AutoModelForSequenceClassification", num_labels=1
    )
    model.config.pad_token_id = tokenizer.pad_token_id

    args = RewardConfig(
        **trainer_arguments(cfg, ctx),
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        dataset_num_proc=None,
    )
    trainer = RewardTrainer(
        args=args, **trl_trainer_kwargs(ctx, cfg, model, tokenizer, train_rows, "SEQ_CLS")
    )
    metrics = truncation(train_rows, tokenizer, cfg.max_length, ctx.name, ["chosen", "rejected"])
    if eval_rows:
        metrics["eval_accuracy_before"] = pairwise_accuracy(
            LearnedRewardModel(trainer.model, tokenizer), eval_rows
        )
    metrics["train_loss"] = trainer.train(resume_from_checkpoint=last_checkpoint(ctx)).training_loss
    if eval_rows:
        metrics["eval_accuracy"] = pairwise_accuracy(LearnedRewardModel(trainer.model, tokenizer), eval_rows)
        metrics["eval_pairs"] = float(len(eval_rows))
    save_trained(trainer, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)
