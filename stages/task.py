"""Supervised task fine-tuning: sequence classification on {"text","label"}, token classification (BIO
sequence labelling) on {"tokens","tags"}, or seq2seq on {"source","target"}. Scored on held-out rows with
the project's `evaluate` metrics (stages/task_metrics/) before and after training, beside a trivial
baseline: the majority class, all-O tags, or the source copied."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch

from pipeline.config_schema import InvalidValue
from pipeline.data import CLASSIFICATION, SOURCE_TARGET, TOKEN_TAGS, load_rows, train_and_eval
from pipeline.errors import DataError
from pipeline.log import log
from pipeline.model_building import bert_config, t5_config
from pipeline.models import load_model, load_tokenizer
from pipeline.stage_config import (
    LEARNED_POSITION_FAMILIES,
    LoraConfig,
    ModelConfig,
    TrainingConfig,
    check_positive,
    input_field,
)
from pipeline.tokenizer_training import train_encoder_tokenizer, train_seq2seq_tokenizer
from stages import task_metrics
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    last_checkpoint,
    loss_from_model_alone,
    save_trained,
    stage_callbacks,
    trainer_arguments,
)
from stages.lora import peft_config
from stages.objectives import IGNORE, pad

COLUMNS = {"classification": CLASSIFICATION, "token_classification": TOKEN_TAGS, "seq2seq": SOURCE_TARGET}
AUTO_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "seq2seq": "AutoModelForSeq2SeqLM",
}
PEFT_TASK_TYPES = {
    "classification": "SEQ_CLS",
    "token_classification": "TOKEN_CLS",
    "seq2seq": "SEQ_2_SEQ_LM",
}
METRICS = {"classification": "accuracy_f1", "token_classification": "seqeval_lite", "seq2seq": "bleu_chrf"}
SCRATCH_FAMILY = {"classification": "bert", "token_classification": "bert", "seq2seq": "t5"}


@dataclass
class TaskStageConfig(TrainingConfig):
    init_from: str | None = input_field(None)  # a checkpoint (e.g. a pretrain stage); None: build `model`
    model: ModelConfig = field(default_factory=lambda: ModelConfig(family="bert"))
    task: Literal["classification", "token_classification", "seq2seq"] = "classification"
    data: str = ""  # rows of the task's format (see COLUMNS)
    max_length: int = 128  # tokens of a text / source / target
    max_new_tokens: int = 32  # seq2seq: greedy decoding length at evaluation
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "max_length", "max_new_tokens")
        family = SCRATCH_FAMILY[self.task]
        if not self.init_from and self.model.family != family:
            raise InvalidValue(
                "task",
                f"is '{self.task}', which from scratch builds a model of family '{family}', but model.family "
                f"is '{self.model.family}': set model.family: {family}, or init_from a checkpoint.",
            )
        positions = self.model.max_position_embeddings
        if not self.init_from and family in LEARNED_POSITION_FAMILIES and self.max_length > positions:
            raise InvalidValue(
                "max_length",
                f"({self.max_length}) must be <= model.max_position_embeddings ({positions}): "
                f"{family} has no position embedding beyond it.",
            )


Config = TaskStageConfig  # the stage registry's handle (stages/__init__.py)


def check(cfg: TaskStageConfig) -> None:
    """Validate the data up front, before any stage of the run trains."""
    for source in (cfg.data, cfg.eval_data):
        if source:
            label_names(load_rows(source, COLUMNS[cfg.task], f"{cfg.task} data"), cfg.task)


def label_names(rows: list[dict], task: str) -> list:
    """The classes (classification) or tags (token classification, "O" first), sorted; [] for seq2seq."""
    if task == "seq2seq":
        return []
    if task == "token_classification":
        return sorted({tag for r in rows for tag in r["tags"]}, key=lambda t: (t != "O", t))
    labels = {r["label"] for r in rows}
    if len({type(label) for label in labels}) > 1:
        raise DataError(
            f"The labels mix strings and integers ({sorted(map(repr, labels))[:6]}): use one kind."
        )
    return sorted(labels)


# ---------------------------------------------------------------- encoding rows as model inputs
def word_starts(words: list[str]) -> list[int]:
    """Character offset of each word in " ".join(words)."""
    starts, offset = [], 0
    for word in words:
        starts.append(offset)
        offset += len(word) + 1
    return starts


def encode(rows: list[dict], tokenizer, cfg: TaskStageConfig, names: list) -> list[dict]:
    """Model inputs with `labels`: a class id; a tag id at the first sub-token of each word (IGNORE elsewhere,
    `first_tokens` keeps the word -> token index); or the target's token ids."""
    ids = {name: i for i, name in enumerate(names)}
    encoded = []
    for row in rows:
        if cfg.task == "classification":
            item = tokenizer(row["text"], truncation=True, max_length=cfg.max_length)
            item["labels"] = ids.get(row["label"], IGNORE)
        elif cfg.task == "seq2seq":
            item = tokenizer(row["source"], truncation=True, max_length=cfg.max_length)
            item["labels"] = tokenizer(text_target=row["target"], truncation=True, max_length=cfg.max_length)[
                "input_ids"
            ]
        else:
            item = tokenizer(
                " ".join(row["tokens"]),
                truncation=True,
                max_length=cfg.max_length,
                return_offsets_mapping=True,
            )
            starts, first_tokens = word_starts(row["tokens"]), {}
            item["labels"] = []
            for position, (start, end) in enumerate(item.pop("offset_mapping")):
                word = bisect.bisect_right(starts, end - 1) - 1  # the word holding the token's last character
                if end == start or word in first_tokens:  # a special token, or not a word's first token
                    item["labels"].append(IGNORE)
                else:
                    first_tokens[word] = position
                    item["labels"].append(ids.get(row["tags"][word], IGNORE))
            item["first_tokens"] = [first_tokens.get(w, -1) for w in range(len(row["tokens"]))]
        encoded.append(dict(item))
    return encoded


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels padded with IGNORE (`first_tokens` is left out)."""
    batch = {"input_ids": pad([i["input_ids"] for i in items], pad_id)}
    batch["attention_mask"] = pad([[1] * len(i["input_ids"]) for i in items], 0)
    if "token_type_ids" in items[0]:
        batch["token_type_ids"] = pad([i["token_type_ids"] for i in items], 0)
    labels = [i["labels"] for i in items]
    batch["labels"] = torch.tensor(labels) if isinstance(labels[0], int) else pad(labels, IGNORE)
    return batch


# ---------------------------------------------------------------- predicting and scoring
@torch.no_grad()
def predict(
    model, tokenizer, items: list[dict], cfg: TaskStageConfig, names: list, batch_size: int = 64
) -> list:
    """Predicted class per row, tag list per row (words without a token get "O"), or generated text."""
    model.eval()
    device = next(model.parameters()).device
    predictions = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items() if k != "labels"}
        if cfg.task == "seq2seq":
            out = model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False)
            predictions += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
            continue
        best = model(**batch).logits.argmax(-1).cpu()
        for row, item in enumerate(chunk):
            if cfg.task == "classification":
                predictions.append(names[int(best[row])])
            else:
                predictions.append(["O" if t < 0 else names[int(best[row, t])] for t in item["first_tokens"]])
    return predictions


def references(rows: list[dict], task: str) -> list:
    return [r[COLUMNS[task][1]] for r in rows]  # label, tags or target


def trivial_baseline(train_rows: list[dict], eval_rows: list[dict], task: str) -> list:
    """Majority class of the training rows; all-O tags; the source copied."""
    if task == "classification":
        majority = Counter(r["label"] for r in train_rows).most_common(1)[0][0]
        return [majority] * len(eval_rows)
    if task == "token_classification":
        return [["O"] * len(r["tokens"]) for r in eval_rows]
    return [r["source"] for r in eval_rows]


def score(metric, predictions: list, refs: list, task: str, names: list) -> dict[str, float]:
    """The headline numbers of the task's metric module."""
    if task == "classification":
        return metric.compute(predictions=predictions, references=refs, labels=names)
    result = metric.compute(predictions=predictions, references=refs)
    if task == "token_classification":
        return {k.removeprefix("overall_"): v for k, v in result.items() if k.startswith("overall_")}
    return result


# ---------------------------------------------------------------- the stage
def training_texts(rows: list[dict], task: str) -> list[str]:
    if task == "classification":
        return [r["text"] for r in rows]
    if task == "token_classification":
        return [" ".join(r["tokens"]) for r in rows]
    return [r[column] for r in rows for column in ("source", "target")]


def build(cfg: TaskStageConfig, ctx: StageContext, train_rows: list[dict], names: list):
    """(tokenizer, model): from init_from, or from `model` with a tokenizer trained on the training text."""
    id2label = dict(enumerate(map(str, names)))
    head = {}
    if cfg.task != "seq2seq":
        head = dict(num_labels=len(names), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    source = ctx.inputs.get("init_from")
    if source:
        tokenizer = load_tokenizer(source, cfg.trust_remote_code)
        model = load_model(AUTO_CLASSES[cfg.task], source, cfg.trust_remote_code, cfg.dtype, **head)
    else:
        import transformers

        texts = training_texts(train_rows, cfg.task)
        log(f"[{ctx.name}] training a BPE tokenizer (vocab {cfg.model.vocab_size}) on {len(texts)} texts")
        if cfg.task == "seq2seq":
            tokenizer = train_seq2seq_tokenizer(texts, cfg.model.vocab_size, n_sentinels=0)
            config = t5_config(cfg.model, tokenizer)
        else:
            tokenizer = train_encoder_tokenizer(texts, cfg.model.vocab_size)
            config = bert_config(cfg.model, tokenizer, **head)
        auto_class = getattr(transformers, AUTO_CLASSES[cfg.task])
        model = auto_class.from_config(config, dtype=getattr(torch, cfg.dtype))
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def run(ctx: StageContext) -> StageResult:
    from transformers import Trainer, TrainingArguments

    cfg: TaskStageConfig = ctx.config
    train_rows, eval_rows = train_and_eval(
        cfg.data, cfg.eval_data, cfg.eval_fraction, COLUMNS[cfg.task], ctx.seed, f"{cfg.task} data"
    )
    names = label_names(train_rows + eval_rows, cfg.task)

    # 1. tokenizer and model (a task head on the checkpoint, or built from scratch), LoRA if asked
    tokenizer, model = build(cfg, ctx, train_rows, names)
    lora = peft_config(cfg.lora, PEFT_TASK_TYPES[cfg.task])
    if lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora)
    train_items, eval_items = (encode(rows, tokenizer, cfg, names) for rows in (train_rows, eval_rows))

    # 2. held-out metric of the trivial baseline and of the model before training
    metric = task_metrics.load(METRICS[cfg.task])
    refs = references(eval_rows, cfg.task)

    def held_out(predictions: list, prefix: str, suffix: str = "") -> dict[str, float]:
        return {
            f"{prefix}{k}{suffix}": v for k, v in score(metric, predictions, refs, cfg.task, names).items()
        }

    results: dict[str, float] = {}
    if eval_rows:
        results |= held_out(trivial_baseline(train_rows, eval_rows, cfg.task), "baseline_")
        results |= held_out(predict(model, tokenizer, eval_items, cfg, names), "eval_", "_before")

    # 3. train
    trainer = Trainer(
        callbacks=stage_callbacks(ctx, cfg),
        model=model,
        args=TrainingArguments(**trainer_arguments(cfg, ctx) | {"remove_unused_columns": False}),
        train_dataset=train_items,  # a list of dicts: the collator pads them
        data_collator=lambda items: collate(items, tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    loss_from_model_alone(trainer)
    results["train_loss"] = trainer.train(resume_from_checkpoint=last_checkpoint(ctx)).training_loss
    model = trainer.model
    if eval_rows:
        results |= held_out(predict(model, tokenizer, eval_items, cfg, names), "eval_")
        results["eval_rows"] = float(len(eval_rows))

    # 4. HF-native output (a LoRA adapter in adapter/, merged weights at the top)
    save_trained(trainer, tokenizer, ctx.out_dir)
    return StageResult(metrics=results)
