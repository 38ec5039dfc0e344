"""What every demo task shares: the task spec, the five split builders that turn a spec into rows, the way
replies are joined and ended, and the reading of a completion that every gold scorer and rule starts from."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("corpus", "sft", "prefs", "prompts", "eval_prompts")
SIZES: dict[str, int] = {"corpus": 4000, "sft": 2000, "prefs": 2000, "prompts": 512, "eval_prompts": 128}
LABEL_NOISE = 0.1  # share of preference pairs whose chosen/rejected are swapped, like human raters
UNFINISHED_RATE = 0.05  # share of SFT replies cut before their " .", a flaw RL can learn to fix
HOLDOUT_EVERY = 4  # every 4th subject / issue is kept for eval_prompts only
CORPUS_DIALOGUE_SHARE = 0.7  # the rest of the corpus is other sentences about the same things
UNFINISHED_PENALTY = -1.0  # what the graded gold scorers take off a reply cut before its final " ."
SCORE_LIMIT = 5.0  # many distinct adjectives or actions could push a score far out; clip to [-5, 5]


def finish_and_clip(score: float, tokens: list[str]) -> float:
    """A graded gold score with UNFINISHED_PENALTY for a reply without its final " .", clipped to
    [-SCORE_LIMIT, SCORE_LIMIT]."""
    if not tokens or tokens[-1] != ".":  # a reply cut off before its final " ." is unfinished
        score += UNFINISHED_PENALTY
    return max(-SCORE_LIMIT, min(SCORE_LIMIT, score))


def join_and_end(
    rng: random.Random, clauses: list[list[str]], joiners: tuple[str, ...], unfinished_rate: float
) -> str:
    """Join clauses with random joiners and end with " ."; with unfinished_rate, stop early instead."""
    tokens = list(clauses[0])
    for clause in clauses[1:]:
        tokens += rng.choice(joiners).split() + clause
    if rng.random() < unfinished_rate:
        cut = rng.randint(0, min(2, len(tokens) - 1))  # drop " ." and up to two more tokens
        return " " + " ".join(tokens[: len(tokens) - cut])
    return " " + " ".join(tokens) + " ."


@dataclass(frozen=True)
class TaskSpec:
    train_pool: list[tuple[str, str]]  # (prompt, key the completion grammar needs)
    eval_pool: list[tuple[str, str]]
    completion: Callable[[random.Random, str, float], str]
    filler: Callable[[random.Random], str]
    gold: Callable[..., list[float]]
    flaw_rate: float = UNFINISHED_RATE  # share of flawed sft / prefs completions
    corpus_sees_held_out: bool = True  # arithmetic: no, the corpus would hold eval answers


def corpus(spec: TaskSpec, rng: random.Random, n: int) -> list[dict]:
    """Pretraining text: whole dialogues (about held-out subjects too, except for arithmetic) plus other
    sentences."""
    every_prompt = spec.train_pool + spec.eval_pool if spec.corpus_sees_held_out else spec.train_pool
    rows = []
    for _ in range(n):
        if rng.random() < CORPUS_DIALOGUE_SHARE:
            prompt, key = rng.choice(every_prompt)
            rows.append({"text": prompt + spec.completion(rng, key, 0.0)})
        else:
            rows.append({"text": spec.filler(rng)})
    return rows


def sft(spec: TaskSpec, rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        prompt, key = rng.choice(spec.train_pool)
        rows.append({"prompt": prompt, "completion": spec.completion(rng, key, spec.flaw_rate)})
    return rows


def prefs(spec: TaskSpec, rng: random.Random, n: int) -> list[dict]:
    """Two SFT-style replies per prompt, ranked by the gold scorer, then LABEL_NOISE of pairs swapped."""
    rows = []
    while len(rows) < n:
        prompt, key = rng.choice(spec.train_pool)
        first, second = spec.completion(rng, key, spec.flaw_rate), spec.completion(rng, key, spec.flaw_rate)
        first_score, second_score = spec.gold([prompt, prompt], [first, second])
        if first == second or first_score == second_score:  # a tie teaches nothing
            continue
        chosen, rejected = (first, second) if first_score > second_score else (second, first)
        if rng.random() < LABEL_NOISE:
            chosen, rejected = rejected, chosen
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def prompts(spec: TaskSpec, rng: random.Random, n: int) -> list[dict]:
    return [{"prompt": prompt} for prompt, _ in rng.sample(spec.train_pool, n)]


def eval_prompts(spec: TaskSpec, rng: random.Random, n: int) -> list[dict]:
    return [{"prompt": prompt} for prompt, _ in rng.sample(spec.eval_pool, n)]


BUILDERS: dict[str, Callable[[TaskSpec, random.Random, int], list[dict]]] = {
    "corpus": corpus, "sft": sft, "prefs": prefs, "prompts": prompts, "eval_prompts": eval_prompts,
}  # fmt: skip
