"""What the Trainer-based stages (pretrain, sft, reward) share: arguments, resuming, LoRA, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.config import LoraConfig, TrainingConfig
from pipeline.models import save_pretrained
from stages.base import StageContext


def trainer_arguments(cfg: TrainingConfig, ctx: StageContext) -> dict[str, Any]:
    """Keyword arguments shared by transformers' TrainingArguments and TRL's SFTConfig / RewardConfig."""
    save = bool(cfg.checkpoint_every)
    return dict(
        output_dir=str(ctx.work_dir / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 32),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is read as a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.log_every,
        eval_strategy="no",  # the stage evaluates before and after training itself
        save_strategy="steps" if save else "no",
        save_steps=cfg.checkpoint_every or 500,
        report_to="none",
        seed=ctx.seed,
        data_seed=ctx.seed,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        remove_unused_columns=True,
    )


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest resumable Trainer checkpoint of this stage, if a previous attempt left one."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = ctx.work_dir / "trainer"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def peft_config(lora: LoraConfig, task_type: str):
    if not lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )


def save_with_adapter(model, tokenizer, out_dir: Path) -> None:
    """Save loadable weights. A peft model keeps its adapter in out_dir/adapter and merged weights at the top,
    so the next stage (and its KL reference) starts from the fine-tuned policy, not the bare base."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        model = model.merge_and_unload()
    save_pretrained(model, tokenizer, out_dir)
