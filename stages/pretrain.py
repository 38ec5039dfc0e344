"""Pretraining with the causal-LM objective: packed fixed-length blocks, from scratch or from a checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config import ModelConfig, TrainingConfig, input_field
from pipeline.data import TEXT, load_rows, train_and_eval
from pipeline.errors import ConfigError
from pipeline.log import log
from pipeline.models import build_causal_lm, load_model, load_tokenizer, save_pretrained, train_bpe_tokenizer
from stages.base import StageContext, StageResult
from stages.hf_trainer import ReliabilityCallback, last_checkpoint, trainer_arguments


@dataclass
class Config(TrainingConfig):
    init_from: str | None = input_field(None)  # None: build `model` from scratch
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = ""  # {"text"} rows
    objective: str = "clm"
    block_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective != "clm":
            raise ConfigError(
                f"stages.pretrain.objective '{self.objective}' is not supported yet; use 'clm'."
            )


def pack(texts: list[str], tokenizer, block_size: int) -> list[dict[str, list[int]]]:
    """Concatenate documents (each ended by EOS) and cut into full blocks; the ragged tail is dropped."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    n_blocks = len(stream) // block_size
    return [{"input_ids": stream[i * block_size : (i + 1) * block_size]} for i in range(n_blocks)]


def check(cfg: Config) -> None:
    """Validate the data up front, before any stage of the run trains."""
    load_rows(cfg.data, TEXT, "pretraining data")
    if cfg.eval_data:
        load_rows(cfg.eval_data, TEXT, "pretraining data (eval)")


def run(ctx: StageContext) -> StageResult:
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    cfg: Config = ctx.config
    train_rows, eval_rows = train_and_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, TEXT, ctx.seed, "pretraining data"
    )
    train_texts = [r["text"] for r in train_rows]

    # 1. tokenizer and model: loaded, or built from the config (training a BPE tokenizer on the corpus)
    source = ctx.inputs.get("init_from")
    if source:
        tokenizer = load_tokenizer(source, cfg.trust_remote_code)
        model = load_model("AutoModelForCausalLM", source, cfg.trust_remote_code)
    else:
        if cfg.model.tokenizer:
            tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.trust_remote_code)
        else:
            log(
                f"[{ctx.name}] training a BPE tokenizer (vocab {cfg.model.vocab_size}) "
                f"on {len(train_texts)} texts"
            )
            tokenizer = train_bpe_tokenizer(train_texts, cfg.model.vocab_size)
        model = build_causal_lm(cfg.model, tokenizer)
    log(f"[{ctx.name}] model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    # 2. packed blocks
    train_blocks = pack(train_texts, tokenizer, cfg.block_size)
    eval_blocks = pack([r["text"] for r in eval_rows], tokenizer, cfg.block_size)
    if not train_blocks:
        raise ConfigError(f"The pretraining data is shorter than one block of {cfg.block_size} tokens.")

    # 3. train, measuring held-out loss before and after
    trainer = Trainer(
        callbacks=[ReliabilityCallback(ctx.name, cfg.skip_nonfinite)],
        model=model,
        args=TrainingArguments(**trainer_arguments(cfg, ctx)),
        train_dataset=datasets.Dataset.from_list(train_blocks),
        eval_dataset=datasets.Dataset.from_list(eval_blocks) if eval_blocks else None,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    metrics: dict[str, float] = {}
    if eval_blocks:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint(ctx))
    metrics["train_loss"] = train_output.training_loss
    if eval_blocks:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    metrics["train_tokens"] = float(len(train_blocks) * cfg.block_size)

    # 4. HF-native output
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_pretrained(trainer.model, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)
