"""What the Trainer-based stages (pretrain, sft, reward, dpo, task) share: arguments, resuming, LoRA, the
held-out metrics before training, and saving under every engine Accelerate runs them with (DDP, FSDP2,
DeepSpeed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from pipeline import distributed
from pipeline.atomic import atomic_write_json
from pipeline.chat import conversation_ids, use_template
from pipeline.checkpoints import INDEX, latest_valid, step_of, write_index
from pipeline.data import is_conversational, train_and_eval
from pipeline.errors import ConfigError, UserError
from pipeline.faults import crash_point
from pipeline.log import log
from pipeline.models import load_model, load_tokenizer
from pipeline.stage_config import TrainingConfig
from stages.base import StageContext, read_json
from stages.lora import peft_config
from stages.outputs import (
    logs_dir,
    parameters_held,
    save_gathered,
    save_sharded,
    save_with_adapter,
    unsharded_like,
)
from stages.tracking import log_run_files, run_files, set_locations, start_mlflow_run


def trainer_arguments(
    cfg: TrainingConfig, ctx: StageContext, before: HeldOutBefore | None = None
) -> dict[str, Any]:
    """Keyword arguments shared by transformers' TrainingArguments and TRL's SFTConfig / RewardConfig.
    `before`: the stage reports the Trainer's held-out metrics of the untrained model (see HeldOutBefore)."""
    save = bool(cfg.checkpoint_every)
    return dict(
        output_dir=str(ctx.work_dir / "trainer"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        **batch_arguments(cfg.batch_size, cfg.micro_batch_size),
        per_device_eval_batch_size=per_process_batch(max(cfg.batch_size, 32)),
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is read as a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.log_every,
        eval_strategy="no",  # the stage evaluates after training itself
        eval_on_start=before is not None and before.metrics is None,
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


def rows_tokenizer_and_model(
    cfg: TrainingConfig, ctx: StageContext, columns: Sequence[str], what: str, auto_class: str, **kwargs: Any
):
    """What a fine-tuning stage starts from: its training and held-out rows (`data`, and `eval_data` or an
    `eval_fraction` split), and the tokenizer and `auto_class` model of its `init_from` checkpoint. The
    tokenizer carries the stage's `chat_template` if set; conversational rows need it to have one."""
    train_rows, eval_rows = train_and_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, columns, ctx.seed, what
    )
    source = ctx.inputs["init_from"]
    tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    if cfg.chat_template or is_conversational(train_rows):
        use_template(tokenizer, cfg.chat_template, source, f"Stage '{ctx.name}': {what} '{cfg.data}'")
    model = load_model(auto_class, source, cfg.trust_remote_code, cfg.dtype, **kwargs)
    return train_rows, eval_rows, tokenizer, model


def trl_trainer_kwargs(
    ctx: StageContext,
    cfg: TrainingConfig,
    model: torch.nn.Module,
    tokenizer,
    train_rows: list[dict],
    peft_task: str,
    before: HeldOutBefore | None = None,
) -> dict[str, Any]:
    """Keyword arguments shared by TRL's SFTTrainer / RewardTrainer / DPOTrainer: the stage's callbacks (and
    `before`, see HeldOutBefore), model, training rows as a Dataset, tokenizer, and its LoRA (`cfg.lora`)
    as a peft config of task type `peft_task` when enabled."""
    import datasets

    return dict(
        callbacks=stage_callbacks(ctx, cfg) + ([before] if before else []),
        model=model,
        train_dataset=datasets.Dataset.from_list(train_rows),
        processing_class=tokenizer,
        peft_config=peft_config(cfg.lora, peft_task),
    )


def batch_arguments(batch_size: int, micro_batch_size: int | None) -> dict[str, int]:
    """The Trainer's per-device batch and accumulation steps that make `batch_size` the global batch."""
    per_process = per_process_batch(batch_size)
    micro = micro_batch_size or per_process
    if per_process % micro:
        raise ConfigError(
            f"micro_batch_size ({micro}) must divide each process's share of batch_size ({batch_size} / "
            f"{distributed.world_size()} processes = {per_process})."
        )
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": per_process // micro}


def truncation(rows: list[dict], tokenizer, max_length: int, stage: str, columns: Sequence[str]) -> dict:
    """How many training rows `max_length` cuts: for each row the longest of prompt + each column in
    `columns`, in tokens, plus the EOS the trainers append (a conversation: its templated tokens)."""
    longest = [0] * len(rows)
    for column in columns:
        if is_conversational(rows):
            lengths = [len(conversation_ids(tokenizer, row.get("prompt", []) + row[column])) for row in rows]
        else:
            texts = [row.get("prompt", "") + row[column] for row in rows]
            lengths = [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        longest = [max(a, b) for a, b in zip(longest, lengths)]
    return truncation_metrics(longest, max_length, stage)


def truncation_metrics(lengths: list[int], max_length: int, stage: str) -> dict:
    """Logged as a warning when any row is longer than `max_length`, and returned as the stage's metrics
    `truncated_rows` / `truncated_fraction`, so a cut is never silent."""
    cut = sum(length > max_length for length in lengths)
    if cut:
        log(
            f"[{stage}] warning: {cut} of {len(lengths)} training rows ({cut / len(lengths):.1%}) are longer "
            f"than max_length={max_length} tokens (longest {max(lengths)}) and are truncated; raise "
            "max_length to train on them whole"
        )
    return {"truncated_rows": float(cut), "truncated_fraction": cut / max(len(lengths), 1)}


def per_process_batch(batch_size: int) -> int:
    """`batch_size` is the global batch: the same training whatever the number of processes."""
    world = distributed.world_size()
    if batch_size % world:
        raise ConfigError(
            f"batch_size ({batch_size}) must be divisible by the number of processes ({world})."
        )
    return batch_size // world


def tracker_setup(report_to: list[str], ctx: StageContext) -> list[str] | str:
    """Trainer's `report_to`, each tracker pointed at <run-dir>/logs (stages/tracking.py)."""
    set_locations(report_to, logs_dir(ctx))
    start_mlflow_run(report_to, ctx.name)
    return list(report_to) or "none"


class HeldOutBefore(TrainerCallback):
    """The Trainer's held-out metrics of the untrained model, measured by its own `eval_on_start` inside
    `train()`, once the engine has prepared the model.

    Calling `trainer.evaluate()` before `train()` instead fails or misleads under two engines: DeepSpeed
    ZeRO-2 refuses evaluation outside training (ZeRO inference needs stage 3), and under DDP evaluating
    first marks the model prepared without wrapping it, so `train()` never wraps it and each process trains
    alone (transformers 5.24, accelerate 1.15). The figures are kept in the stage's work folder: a resumed
    attempt starts from a checkpoint, not from the untrained model, and reports the first attempt's."""

    FILE = "held_out_before.json"

    def __init__(self, ctx: StageContext):
        self.path = ctx.work_dir / self.FILE
        self.metrics: dict[str, float] | None = read_json(ctx.work_dir, self.FILE, None)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.metrics is None and state.global_step == 0:
            self.metrics = dict(metrics)
            if state.is_world_process_zero:
                atomic_write_json(self.path, self.metrics)


def save_trained(trainer, tokenizer, out_dir: Path) -> None:
    """The stage's output folder (LoRA: merged weights and the adapter) under whichever engine trained.

    Replicated weights (one process, DDP, DeepSpeed ZeRO-1/2) are saved by the main process. Sharded ones
    are gathered first with every process taking part: FSDP through torch's distributed state dict, ZeRO-3
    through Accelerate's `get_state_dict` (which needs `zero3_save_16bit_model: true`, as
    configs/accelerate/deepspeed-zero3.yaml sets). The ZeRO-3 path has not been run: DeepSpeed does not run
    on this project's CPU machines (docs/distributed.md)."""
    model = trainer.model
    if trainer.is_fsdp_enabled:
        save_sharded(model, tokenizer, out_dir, lambda: unsharded_like(model))
    elif trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        full = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every process gathers
        save_gathered(full, tokenizer, out_dir, lambda: unsharded_like(model))
    else:
        save_with_adapter(model, tokenizer, out_dir)


def loss_from_model_alone(trainer) -> None:
    """For models whose own loss is a mean that ignores `num_items_in_batch` (BERT heads, T5): keep the
    Trainer from treating it as a sum over the global item count.

    The Trainer decides from `**kwargs` in `forward` that the model divides its loss by the global number of
    items, and multiplies the loss by the number of processes to undo DDP's averaging. These models return
    a mean and drop the keyword, so on N processes their loss and gradients came out N times too large
    (transformers 5.24). Without the flag each process's mean loss is averaged by DDP, which is the global
    mean when every process has as many items (one label per example; T5 span corruption's fixed targets).
    """
    trainer.model_accepts_loss_kwargs = False


def last_checkpoint(ctx: StageContext) -> str | None:
    """The newest verified Trainer checkpoint a previous attempt of this stage left, if any."""
    folder = latest_valid(ctx.work_dir / "trainer", ctx.name)
    return str(folder) if folder else None


def stage_callbacks(ctx: StageContext, cfg: TrainingConfig) -> list[TrainerCallback]:
    """The callbacks of every Trainer stage: reliability, and the run's files sent to its trackers."""
    return [
        ReliabilityCallback(ctx.name, cfg.skip_nonfinite),
        RunFilesCallback(cfg.report_to, ctx),
        ShardReport(ctx.name),
    ]


class RunFilesCallback(TrainerCallback):
    """Attaches the run directory's config and manifest to the trackers' runs once they have started
    (transformers' tracker callbacks run first: they come before the stage's own)."""

    def __init__(self, report_to: list[str], ctx: StageContext):
        self.report_to, self.files, self.logs = report_to, run_files(ctx.run_dir), logs_dir(ctx)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            log_run_files(self.report_to, self.files, self.logs)


class ShardReport(TrainerCallback):
    """Says, once the engine has prepared the model, how much of it each process holds: the proof that a
    sharded launch really shards (an FSDP request Accelerate ignores would train replicated, silently)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        held, total = parameters_held(model)
        if held < total:
            log(
                f"[{self.stage}] FSDP2: this process holds {100 * held / total:.1f}% of the parameters "
                f"({held:,} of {total:,})"
            )


class ReliabilityCallback(TrainerCallback):
    """Seals each checkpoint with an index, stops (or skips the update) on non-finite gradients before they
    reach the weights (a NaN never gets saved), and logs the last step so the reported train loss is the
    mean over every process."""

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
        # The Trainer gathers the loss across processes only when it logs; what is left since the last log
        # enters `training_loss` from the main process alone.
        if state.global_step >= state.max_steps:
            control.should_log = True

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
