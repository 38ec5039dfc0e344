"""Embedded synthetic demo tasks, every split generated from a seed; one module per task family holds its
generator, its gold scorer and its reward rules:

  reviews     "reviews": opinions in a tiny language; gold `reviews_gold` (sentiment)
  support     "support": customer and agent; gold `support_gold` (politeness and helpfulness)
  arithmetic  "arithmetic": sums and differences; rules `arithmetic_exact` (gold), `arithmetic_format`
  digits      "copy" and "sort": digit strings; rules `copy_exact`, `sort_exact` (gold)
  chat        "chat": the reviews task as conversations; gold `reviews_gold` on the last reply
  supervised  "sentiment", "ner", "summary" for the `task` stage (splits train / test)
  common      the task spec, the split builders and what the scorers share

Held-out subjects / issues appear only in the pretraining corpus and eval_prompts, never in sft, prefs or
prompts; held-out arithmetic operand pairs and digit strings appear only in eval_prompts."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.demo import arithmetic, digits, reviews, support
from pipeline.demo.arithmetic import ARITHMETIC_CORRECT_RATE, ARITHMETIC_FLAW_RATE
from pipeline.demo.chat import CHAT_EARLIER_TURN, CHAT_SYSTEM, chat_split
from pipeline.demo.common import (
    BUILDERS,
    CORPUS_DIALOGUE_SHARE,
    HOLDOUT_EVERY,
    LABEL_NOISE,
    SIZES,
    SPLITS,
    UNFINISHED_RATE,
    TaskSpec,
)
from pipeline.demo.supervised import SUPERVISED_SIZES, SUPERVISED_SPLITS, SUPERVISED_TASKS, supervised_split

SPECS: dict[str, TaskSpec] = {
    "reviews": reviews.SPEC,
    "support": support.SPEC,
    "arithmetic": arithmetic.SPEC,
    "copy": digits.COPY_SPEC,
    "sort": digits.SORT_SPEC,
}
TASKS: tuple[str, ...] = (*SPECS, "chat")

__all__ = [
    "ARITHMETIC_CORRECT_RATE",
    "ARITHMETIC_FLAW_RATE",
    "CHAT_EARLIER_TURN",
    "CHAT_SYSTEM",
    "CORPUS_DIALOGUE_SHARE",
    "HOLDOUT_EVERY",
    "LABEL_NOISE",
    "SIZES",
    "SPECS",
    "SPLITS",
    "SUPERVISED_SIZES",
    "SUPERVISED_SPLITS",
    "SUPERVISED_TASKS",
    "TASKS",
    "UNFINISHED_RATE",
    "TaskSpec",
    "generate",
    "generate_split",
    "write",
]


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown demo {name} {value!r}; valid {name}s: {', '.join(valid)}")


def generate_split(task: str, split: str, seed: int = 0) -> list[dict]:
    """One split of a demo task; each split has its own RNG stream, so this is generate(task, seed)[split]."""
    _check("task", task, TASKS + SUPERVISED_TASKS)
    _check("split", split, SUPERVISED_SPLITS if task in SUPERVISED_TASKS else SPLITS)
    if task in SUPERVISED_TASKS:
        return supervised_split(task, split, seed)
    rng = random.Random(f"{task}/{split}/{seed}")  # str seeds hash with sha512: same in every process
    if task == "chat":
        if split == "corpus":  # plain text: the same documents as the reviews task
            return generate_split("reviews", split, seed)
        return chat_split(split, rng, SIZES[split])
    return BUILDERS[split](SPECS[task], rng, SIZES[split])


def generate(task: str, seed: int = 0) -> dict[str, list[dict]]:
    """All splits of a demo task. corpus: [{"text"}]; sft: [{"prompt","completion"}];
    prefs: [{"prompt","chosen","rejected"}]; prompts (RL training prompts) and eval_prompts (held out):
    [{"prompt"}]."""
    _check("task", task, TASKS + SUPERVISED_TASKS)
    splits = SUPERVISED_SPLITS if task in SUPERVISED_TASKS else SPLITS
    return {split: generate_split(task, split, seed) for split in splits}


def write(task: str, out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write every split as <out_dir>/<split>.jsonl, one JSON object per line; returns split -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in generate(task, seed).items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths
