"""What the Trainer-based stages (pretrain, sft, reward) share: arguments, resuming, LoRA, saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from pipeline import distributed
from pipeline.checkpoints import INDEX, latest_valid, step_of, write_index
from pipeline.config import LoraConfig, TrainingConfig
from pipeline.errors import ConfigError, UserError
from pipeline.faults import crash_point
from pipeline.log import log
from pipeline.models import save_pretrained
from stages.base import StageContext


def trainer_arguments(cfg: TrainingConfig, ctx: StageContext) -> dict[str, Any]:
    """Keyword arguments shared by transformers' TrainingArguments and TRL's SFTConfig / RewardConfig."""
    save = bool(cfg.checkpoint_every)
    return dict(
        output_dir=str(ctx.work_dir / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=per_process_batch(cfg.batch_size),
        per_device_eval_batch_size=per_process_batch(max(cfg.batch_size, 32)),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is read as a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.log_every,
        eval_strategy="no",  # the stage evaluates before and after training itself
        save_strategy="steps" if save else "no",
        save_steps=cfg.checkpoint_every or 500,
        save_total_limit=max(1, cfg.keep_checkpoints),
        logging_nan_inf_filter=False,  # a NaN loss must be seen, not averaged away
        report_to=tracker_setup(cfg.report_to, ctx),
        seed=ctx.seed,
        data_seed=ctx.seed,
        bf16=cfg.mixed_precision == "bf16",
        gradient_checkpointing=cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        remove_unused_columns=True,
    )


def per_process_batch(batch_size: int) -> int:
    """`batch_size` is the global batch: the same training whatever the number of processes."""
    world = distributed.world_size()
    if batch_size % world:
        raise ConfigError(
            f"batch_size ({batch_size}) must be divisible by the number of processes ({world})."
        )
    return batch_size // world


def tracker_setup(report_to: list[str], ctx: StageContext) -> list[str] | str:
    """Trainer's `report_to`; TensorBoard writes to <run-dir>/logs/<stage> (transformers reads the folder
    from TENSORBOARD_LOGGING_DIR)."""
    if "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logs_dir(ctx))
    return list(report_to) or "none"


def logs_dir(ctx: StageContext) -> Path:
    return (ctx.run_dir or ctx.out_dir.parent) / "logs" / ctx.name


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest verified Trainer checkpoint a previous attempt of this stage left, if any."""
    folder = latest_valid(ctx.work_dir / "trainer", ctx.name)
    return str(folder) if folder else None


class ReliabilityCallback(TrainerCallback):
    """Seals each checkpoint with an index, and stops (or skips the update) on non-finite gradients
    before they reach the weights: a NaN never gets saved."""

    def __init__(self, stage: str, skip_nonfinite: bool):
        self.stage, self.skip_nonfinite, self.skipped = stage, skip_nonfinite, 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.norm() for g in grads])).all():
            if not self.skip_nonfinite:
                raise NonFiniteError(self.stage, state.global_step + 1, newest_checkpoint(args.output_dir))
            self.skipped += 1
            log(f"[{self.stage}] step {state.global_step + 1}: non-finite gradients, update skipped")
            for p in model.parameters():
                p.grad = None  # the optimizer leaves parameters without a gradient untouched

    def on_step_end(self, args, state, control, **kwargs):
        crash_point("train.step", state.global_step)

    def on_save(self, args, state, control, **kwargs):
        distributed.barrier()  # every process has written its part (e.g. its RNG state) before the seal
        if distributed.is_main():
            write_index(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)
        distributed.barrier()


class NonFiniteError(UserError):
    def __init__(self, stage: str, step: int, checkpoint: str | None):
        where = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"
        super().__init__(
            f"Stage '{stage}': the loss or gradients became NaN/inf at step {step}; stopped before updating "
            f"the weights ({where}). Lower the learning rate, or set skip_nonfinite: true to skip such steps."
        )


def newest_checkpoint(output_dir: str) -> str | None:
    sealed = sorted(Path(output_dir).glob("checkpoint-*/" + INDEX), key=lambda p: step_of(p.parent))
    return str(sealed[-1].parent) if sealed else None


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

    if not distributed.is_main():  # one writer; every process holds the same weights
        return
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(
            f"Refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]}) to {out_dir}."
        )
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        model = model.merge_and_unload()
    save_pretrained(model, tokenizer, out_dir)
