"""Pretraining from scratch or from a checkpoint with one of three objectives:
clm (causal LM on packed blocks), mlm (BERT's masked LM, optionally with next-sentence prediction) and
seq2seq (T5's span corruption on packed blocks). The data math lives in stages/objectives.py."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pipeline.chat import use_template
from pipeline.config_schema import InvalidValue
from pipeline.data import TEXT, check_sources, train_and_eval
from pipeline.errors import ConfigError
from pipeline.log import log
from pipeline.model_building import build_causal_lm, build_masked_lm, build_seq2seq_lm
from pipeline.models import load_model, load_tokenizer
from pipeline.stage_config import (
    LEARNED_POSITION_FAMILIES,
    ModelConfig,
    TrainingConfig,
    check_range,
    input_field,
)
from pipeline.tokenizer_training import (
    sentinel_ids,
    train_bpe_tokenizer,
    train_encoder_tokenizer,
    train_seq2seq_tokenizer,
)
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    HeldOutBefore,
    last_checkpoint,
    loss_from_model_alone,
    save_trained,
    stage_callbacks,
    trainer_arguments,
)
from stages.objectives import (
    MaskingCollator,
    MaskingConfig,
    SpanCorruptionCollator,
    argmax_logits,
    mlm_examples,
    mlm_metrics,
    noise_counts,
)

FAMILIES = {"clm": ("llama", "gpt2", "qwen2"), "mlm": ("bert",), "seq2seq": ("t5",)}
# The fewest tokens a block (mlm: an example) holds and still trains: a token and the next one (clm); a
# span and a kept token (seq2seq); [CLS] a token [SEP] (mlm), with nsp [CLS] A [SEP] B [SEP].
MIN_BLOCK_SIZE = {"clm": 2, "seq2seq": 2, "mlm": 3, "nsp": 5}


@dataclass
class PretrainStageConfig(TrainingConfig):
    init_from: str | None = input_field(None)  # None: build `model` from scratch
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = ""  # {"text"} rows; for nsp, in document order
    objective: Literal["clm", "mlm", "seq2seq"] = "clm"
    block_size: int = 64  # clm / seq2seq: tokens per packed block; mlm: most tokens per example
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # mlm
    nsp: bool = False  # mlm: add next-sentence prediction (BertForPreTraining)
    noise_density: float = 0.15  # seq2seq: share of each block's tokens hidden in spans
    mean_span_length: float = 3.0  # seq2seq

    def __post_init__(self) -> None:
        super().__post_init__()
        families = FAMILIES[self.objective]
        if not self.init_from and self.model.family not in families:
            raise InvalidValue(
                "objective",
                f"is '{self.objective}', which trains a model of family {' or '.join(families)}, but "
                f"model.family is '{self.model.family}': set model.family: {families[0]}.",
            )
        with_nsp = self.objective == "mlm" and self.nsp
        shortest = MIN_BLOCK_SIZE["nsp" if with_nsp else self.objective]
        if self.block_size < shortest:
            objective = f"{self.objective}{' with nsp' if with_nsp else ''}"
            raise InvalidValue(
                "block_size", f"must be >= {shortest} for objective {objective}, got {self.block_size}."
            )
        positions, family = self.model.max_position_embeddings, self.model.family
        if not self.init_from and family in LEARNED_POSITION_FAMILIES and self.block_size > positions:
            raise InvalidValue(
                "block_size",
                f"({self.block_size}) must be <= model.max_position_embeddings ({positions}): "
                f"{family} has no position embedding beyond it.",
            )
        check_range(self, "noise_density", 0, 1, low_open=True)
        if self.mean_span_length < 1.0:
            raise InvalidValue("mean_span_length", f"must be >= 1, got {self.mean_span_length}.")

    def longest_sequence(self) -> tuple[int, str] | None:
        return self.block_size, "block_size"

    def position_limit(self) -> int | None:
        learned = not self.init_from and self.model.family in LEARNED_POSITION_FAMILIES
        return self.model.max_position_embeddings if learned else None


Config = PretrainStageConfig  # the stage registry's handle (stages/__init__.py)


@dataclass
class Objective:
    """What one objective hands the shared training loop."""

    model: torch.nn.Module
    tokenizer: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    collator: Any
    compute_metrics: Any = None  # held-out metrics beyond the loss
    keep_columns: bool = False  # the collator needs columns the model's forward does not take


def check(cfg: PretrainStageConfig) -> None:
    """Validate the data up front, before any stage of the run trains."""
    check_sources(cfg.data, cfg.eval_data, TEXT, "pretraining data")


def pack(texts: list[str], tokenizer, block_size: int) -> list[dict[str, list[int]]]:
    """Concatenate documents (each ended by EOS) and cut into full blocks; the ragged tail is dropped."""
    if not texts:  # e.g. no held-out split (eval_fraction 0): the tokenizer refuses an empty batch
        return []
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [tokenizer.eos_token_id])
    n_blocks = len(stream) // block_size
    return [{"input_ids": stream[i * block_size : (i + 1) * block_size]} for i in range(n_blocks)]


def tokenizer_for(cfg: PretrainStageConfig, ctx: StageContext, texts: list[str], train_new):
    """The checkpoint's tokenizer, model.tokenizer, or one trained on the corpus by `train_new` (with
    `model.special_tokens` added); with the stage's `chat_template` if set, saved along with it."""
    source = ctx.inputs.get("init_from") or cfg.model.tokenizer
    if source:
        tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    else:
        log(f"[{ctx.name}] training a BPE tokenizer (vocab {cfg.model.vocab_size}) on {len(texts)} texts")
        tokenizer = train_new(texts, cfg.model.vocab_size)
        if cfg.model.special_tokens:
            tokenizer.add_special_tokens({"additional_special_tokens": list(cfg.model.special_tokens)})
    if cfg.chat_template:
        use_template(tokenizer, cfg.chat_template, source or "the trained tokenizer", "The chat template")
    return tokenizer


def model_for(cfg: PretrainStageConfig, ctx: StageContext, auto_class: str, build):
    source = ctx.inputs.get("init_from")
    if source:
        return load_model(auto_class, source, cfg.trust_remote_code, cfg.dtype)
    return build().to(getattr(torch, cfg.dtype))


# ---------------------------------------------------------------- one builder per objective
def causal_lm(
    cfg: PretrainStageConfig, ctx: StageContext, train_texts: list[str], eval_texts: list[str]
) -> Objective:
    from transformers import DataCollatorForLanguageModeling

    tokenizer = tokenizer_for(cfg, ctx, train_texts, train_bpe_tokenizer)
    model = model_for(cfg, ctx, "AutoModelForCausalLM", lambda: build_causal_lm(cfg.model, tokenizer))
    return Objective(
        model,
        tokenizer,
        pack(train_texts, tokenizer, cfg.block_size),
        pack(eval_texts, tokenizer, cfg.block_size),
        DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )


def masked_lm(
    cfg: PretrainStageConfig, ctx: StageContext, train_texts: list[str], eval_texts: list[str]
) -> Objective:
    tokenizer = tokenizer_for(cfg, ctx, train_texts, train_encoder_tokenizer)
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"Stage '{ctx.name}': the tokenizer has no mask token, which objective mlm needs.")
    auto_class = "BertForPreTraining" if cfg.nsp else "AutoModelForMaskedLM"
    model = model_for(cfg, ctx, auto_class, lambda: build_masked_lm(cfg.model, tokenizer, cfg.nsp))
    held_out = MaskingCollator(tokenizer, cfg.masking, ctx.seed + 1)
    return Objective(
        model,
        tokenizer,
        mlm_examples(train_texts, tokenizer, cfg.block_size, cfg.nsp, random.Random(ctx.seed)),
        held_out.mask_once(
            mlm_examples(eval_texts, tokenizer, cfg.block_size, cfg.nsp, random.Random(ctx.seed + 1))
        ),
        MaskingCollator(tokenizer, cfg.masking, ctx.seed),  # masks every training batch afresh
        mlm_metrics,
        keep_columns=True,
    )


def span_corruption_lm(
    cfg: PretrainStageConfig, ctx: StageContext, train_texts: list[str], eval_texts: list[str]
) -> Objective:
    _, n_spans = noise_counts(cfg.block_size, cfg.noise_density, cfg.mean_span_length)

    def train_new(texts, vocab_size):  # one sentinel per span, and the one that ends the targets
        return train_seq2seq_tokenizer(texts, vocab_size, n_sentinels=n_spans + 1)

    tokenizer = tokenizer_for(cfg, ctx, train_texts, train_new)
    if len(sentinel_ids(tokenizer)) < n_spans + 1:
        raise ConfigError(
            f"Stage '{ctx.name}': span corruption of {cfg.block_size}-token blocks needs {n_spans + 1} "
            f"sentinel tokens <extra_id_N>; the tokenizer has {len(sentinel_ids(tokenizer))}."
        )
    model = model_for(cfg, ctx, "AutoModelForSeq2SeqLM", lambda: build_seq2seq_lm(cfg.model, tokenizer))

    def collator(seed: int) -> SpanCorruptionCollator:
        return SpanCorruptionCollator(
            tokenizer, sentinel_ids(tokenizer), cfg.noise_density, cfg.mean_span_length, seed
        )

    held_out = collator(ctx.seed + 1)  # corrupted once, so every evaluation scores the same spans
    return Objective(
        model,
        tokenizer,
        [{"tokens": b["input_ids"]} for b in pack(train_texts, tokenizer, cfg.block_size)],
        [held_out.corrupt(b["input_ids"]) for b in pack(eval_texts, tokenizer, cfg.block_size)],
        collator(ctx.seed),  # corrupts every training batch afresh
        keep_columns=True,
    )


OBJECTIVES = {"clm": causal_lm, "mlm": masked_lm, "seq2seq": span_corruption_lm}


# ---------------------------------------------------------------- the stage
def run(ctx: StageContext) -> StageResult:
    import datasets
    from transformers import Trainer, TrainingArguments

    cfg: PretrainStageConfig = ctx.config
    train_rows, eval_rows = train_and_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, TEXT, ctx.seed, "pretraining data"
    )

    # 1. tokenizer, model and examples of the objective (a tokenizer trained on the corpus when from scratch)
    objective = OBJECTIVES[cfg.objective](
        cfg, ctx, [r["text"] for r in train_rows], [r["text"] for r in eval_rows]
    )
    model, tokenizer = objective.model, objective.tokenizer
    log(f"[{ctx.name}] model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    if not objective.train_rows:
        raise ConfigError(f"The pretraining data is shorter than one block of {cfg.block_size} tokens.")

    # 2. train, measuring held-out loss (and the objective's own metrics) before and after
    before = HeldOutBefore(ctx) if objective.eval_rows else None
    args = trainer_arguments(cfg, ctx, before) | {"remove_unused_columns": not objective.keep_columns}
    trainer = Trainer(
        callbacks=stage_callbacks(ctx, cfg) + ([before] if before else []),
        model=model,
        args=TrainingArguments(**args),
        train_dataset=datasets.Dataset.from_list(objective.train_rows),
        eval_dataset=datasets.Dataset.from_list(objective.eval_rows) if objective.eval_rows else None,
        data_collator=objective.collator,
        processing_class=tokenizer,
        compute_metrics=objective.compute_metrics,
        preprocess_logits_for_metrics=argmax_logits if objective.compute_metrics else None,
    )
    if cfg.objective != "clm":  # causal LMs divide by the global token count themselves
        loss_from_model_alone(trainer)
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint(ctx))
    metrics: dict[str, float] = {}
    if before:
        metrics |= {f"{k}_before": v for k, v in held_out_metrics(before.metrics).items()}
    metrics["train_loss"] = train_output.training_loss
    if objective.eval_rows:
        metrics |= held_out_metrics(trainer.evaluate())
        if cfg.objective == "clm":
            metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    metrics["train_tokens"] = float(
        sum(len(r.get("input_ids", r.get("tokens", []))) for r in objective.train_rows)
    )

    # 3. HF-native output
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_trained(trainer, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)


def held_out_metrics(results: dict[str, float]) -> dict[str, float]:
    """eval_loss and the objective's eval_* metrics (the Trainer's timing entries left out)."""
    skip = ("runtime", "per_second", "preparation_time", "epoch")
    return {k: v for k, v in results.items() if not any(s in k for s in skip)}
