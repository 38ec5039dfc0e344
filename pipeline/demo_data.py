"""Embedded synthetic demo tasks ("reviews", "support", "arithmetic", "copy", "sort", and "chat", the
reviews task as conversations), every split generated from a seed. Held-out subjects / issues appear only in
the pretraining corpus and eval_prompts, never in sft, prefs or prompts; held-out arithmetic operand pairs
appear only in eval_prompts.

Supervised tasks for the `task` stage, in the reviews language, with splits train / test (no test row
repeats a train row): "sentiment" ({"text","label"}), "ner" ({"tokens","tags"}, BIO product and aspect
spans) and "summary" ({"source","target"}: a review -> its aspects and their polarity)."""

from __future__ import annotations

import itertools
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from reward_models.gold import (
    INTENSIFIERS,
    NEGATIONS,
    NEGATIVE_ADJECTIVES,
    POSITIVE_ADJECTIVES,
    reviews_gold,
    support_gold,
)
from reward_models.rules import arithmetic_exact, copy_exact, sort_exact

TASKS: tuple[str, ...] = ("reviews", "support", "arithmetic", "copy", "sort", "chat")
SPLITS: tuple[str, ...] = ("corpus", "sft", "prefs", "prompts", "eval_prompts")
SIZES: dict[str, int] = {"corpus": 4000, "sft": 2000, "prefs": 2000, "prompts": 512, "eval_prompts": 128}
SUPERVISED_TASKS: tuple[str, ...] = ("sentiment", "ner", "summary")  # for the `task` stage
SUPERVISED_SPLITS: tuple[str, ...] = ("train", "test")
SUPERVISED_SIZES: dict[str, int] = {"train": 2000, "test": 400}
LABEL_NOISE = 0.1  # share of preference pairs whose chosen/rejected are swapped, like human raters
UNFINISHED_RATE = 0.05  # share of SFT replies cut before their " .", a flaw RL can learn to fix
HOLDOUT_EVERY = 4  # every 4th subject / issue is kept for eval_prompts only
CORPUS_DIALOGUE_SHARE = 0.7  # the rest of the corpus is other sentences about the same things
ARITHMETIC_CORRECT_RATE = 0.47  # share of demo answers with the right number: SFT stays far below 100%
ARITHMETIC_FLAW_RATE = 0.2  # share of SFT / prefs answers in a wrong format (cut, unlabelled, rambling)
CHAT_SYSTEM = "you write short reviews of things people buy , watch and read ."
CHAT_EARLIER_TURN = 0.3  # share of chat rows whose conversation already holds one review exchange


# ---------------------------------------------------------------- reviews: a tiny language of opinions
class _Family(NamedTuple):
    noun: str
    subjects: tuple[str, ...]
    aspects: tuple[str, ...]
    neutral: tuple[str, ...]  # clauses that carry no sentiment


_FAMILIES: dict[str, _Family] = {
    "kitchen": _Family(
        "kitchen tool",
        ("blender", "toaster", "kettle", "coffee maker", "mixer", "microwave", "fridge", "oven"),
        ("motor", "lid", "handle", "button", "cord", "design", "price", "timer"),
        ("i bought it last week", "i use it every morning", "it came in a big box"),
    ),
    "gadget": _Family(
        "gadget",
        ("phone", "laptop", "tablet", "camera", "headphones", "speaker", "monitor", "printer"),
        ("screen", "battery", "sound", "charger", "case", "design", "price", "software"),
        ("i got it for my birthday", "i use it for work", "it arrived on monday"),
    ),
    "movie": _Family(
        "movie",
        ("thriller", "comedy", "western", "cartoon", "documentary", "musical", "sequel", "drama"),
        ("plot", "acting", "music", "ending", "dialogue", "pacing", "cast", "script"),
        ("i saw it last week", "i watched it with friends", "it is two hours long"),
    ),
    "book": _Family(
        "book",
        ("novel", "cookbook", "biography", "textbook", "memoir", "atlas", "poetry book", "travel guide"),
        ("writing", "story", "cover", "paper", "binding", "layout", "index", "font"),
        ("i read it on the train", "my sister gave it to me", "it has four hundred pages"),
    ),
    "gear": _Family(
        "piece of outdoor gear",
        ("jacket", "tent", "backpack", "boots", "umbrella", "sleeping bag", "scarf", "raincoat"),
        ("fabric", "zipper", "color", "fit", "weight", "strap", "price", "stitching"),
        ("i took it on a hike", "i wore it all winter", "it came in the mail"),
    ),
}
_REVIEW_OPENERS = (
    "review of",
    "my review of",
    "thoughts on",
    "opinion on",
    "what i think of",
    "a few words on",
)
_SUBJECT_MODIFIERS = ("", "new ", "old ", "latest ", "first ", "second ", "popular ", "recent ")
_REVIEW_VERBS = ("is", "was", "feels", "seems")
_CONNECTIVES = ("and", "but", ", and", ", but", ",")


def _review_pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, family) for every opener x modifier x subject on one side of the hold-out line."""
    return [
        (f"{opener} the {modifier}{subject} :", name)
        for name, family in _FAMILIES.items()
        for index, subject in enumerate(family.subjects)
        if (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out
        for opener in _REVIEW_OPENERS
        for modifier in _SUBJECT_MODIFIERS
    ]


def _opinion_clause(rng: random.Random, aspect: str, adjective: str) -> list[str]:
    """One opinion such as "the motor is not very great"; adjectives are drawn 50/50 from both signs."""
    subject = ["it"] if rng.random() < 0.2 else ["the", aspect]
    negation = ["not"] if rng.random() < 0.2 else []
    verb = rng.choice(_REVIEW_VERBS[:2] if negation else _REVIEW_VERBS)  # "seems not great" reads oddly
    intensifier = [rng.choice(INTENSIFIERS)] if rng.random() < 0.3 else []
    return subject + [verb] + negation + intensifier + [adjective]


def _review_completion(rng: random.Random, family_name: str, unfinished_rate: float) -> str:
    family = _FAMILIES[family_name]
    n_clauses = rng.randint(1, 3)
    aspects = rng.sample(family.aspects, n_clauses)  # distinct, so no "the lid ... the lid"
    adjectives = rng.sample(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES, n_clauses)
    neutral = rng.sample(family.neutral, n_clauses)
    clauses = [
        plain.split() if rng.random() < 0.15 else _opinion_clause(rng, aspect, adjective)
        for aspect, adjective, plain in zip(aspects, adjectives, neutral)
    ]
    return _join_and_end(rng, clauses, _CONNECTIVES, unfinished_rate)


def _review_filler(rng: random.Random) -> str:
    family = _FAMILIES[rng.choice(list(_FAMILIES))]
    subject = rng.choice(family.subjects)
    first, second = rng.sample(family.aspects, 2)
    return rng.choice(
        (
            f"the {subject} is a {family.noun} .",
            f"people talk about the {first} and the {second} of the {subject} .",
            f"about the {subject} : {rng.choice(family.neutral)} .",
            f"the {first} of a {family.noun} matters .",
        )
    )


# ---------------------------------------------------------------- support: customer and agent
_ISSUES = (
    "my order is late", "my package never arrived", "the item arrived broken", "i was charged twice",
    "i want to return my shoes", "my password does not work", "the app keeps crashing",
    "i got the wrong size", "my refund has not arrived", "the box was empty", "my account is locked",
    "the tracking number is wrong", "the screen is cracked", "i need to change my address",
    "my coupon did not work", "some parts are missing", "the charger stopped working",
    "i got the wrong color", "my bill is too high", "the delivery went to my neighbor",
    "the lamp will not turn on", "my subscription renewed by itself", "the zipper broke on day one",
    "the manual is in the wrong language",
)  # fmt: skip
_GREETINGS = ("", "hi , ", "hello , ", "hey , ", "excuse me , ", "good morning , ")
_COMPLAINT_TAILS = (
    "",
    " , please help",
    " , what now",
    " , can you help",
    " , this is the second time",
    " , i am upset",
)
_REPLY_PHRASES: dict[str, tuple[str, ...]] = {
    "apology": (
        "sorry for the delay", "sorry for the trouble", "i am sorry about that", "we apologize for this",
    ),
    "action": (
        "i will refund you", "i will refund the charge", "i will send a replacement", "i will replace it",
        "i will track your package", "let me track the order", "i will escalate this",
        "i will escalate this to my manager",
    ),
    "thanks": ("thanks for waiting", "thank you for your patience", "thanks for telling us"),
    "rude": (
        "not my problem", "read the manual", "wait", "that is your fault", "call someone else",
        "we can not help you",
    ),
    "neutral": ("let me check", "one moment please", "i see", "i understand", "ok"),
}  # fmt: skip
# tuned so the mean gold of a reply is close to 0: the rude phrases weigh against the polite ones
_REPLY_CATEGORY_WEIGHTS = {"apology": 0.2, "action": 0.2, "thanks": 0.1, "rude": 0.35, "neutral": 0.15}
_REPLY_JOINERS = (",", ".", "and")


def _support_pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, issue) for every greeting x tail x issue on one side of the hold-out line."""
    return [
        (f"customer : {greeting}{issue}{tail} . agent :", issue)
        for index, issue in enumerate(_ISSUES)
        if (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out
        for greeting in _GREETINGS
        for tail in _COMPLAINT_TAILS
    ]


def _support_completion(rng: random.Random, issue: str, unfinished_rate: float) -> str:
    """1-3 phrases from a mix of polite, helpful, neutral and rude ones; the reply ignores the issue."""
    names, weights = list(_REPLY_CATEGORY_WEIGHTS), list(_REPLY_CATEGORY_WEIGHTS.values())
    categories = rng.choices(names, weights=weights, k=3)
    phrases: list[str] = []
    for category in categories[: rng.randint(1, 3)]:
        unused = [p for p in _REPLY_PHRASES[category] if p not in phrases]  # the data never repeats itself
        phrases.append(rng.choice(unused))
    return _join_and_end(rng, [p.split() for p in phrases], _REPLY_JOINERS, unfinished_rate)


def _support_filler(rng: random.Random) -> str:
    phrase = rng.choice(_REPLY_PHRASES[rng.choice(list(_REPLY_PHRASES))])
    return rng.choice(
        (
            f"a customer wrote that {rng.choice(_ISSUES)} .",
            f"the agent said {phrase} .",
            f"customer : {rng.choice(_ISSUES)} .",
            f"agent : {phrase} .",
        )
    )


# ---------------------------------------------------------------- arithmetic: a verifiable reward
_MAX_NUMBER = 99  # operands and results are 0..99: one or two digits, never negative
_ANSWER_OFFSETS = (-10, -2, -1, 1, 2, 10)  # the wrong answers: off by one, two, or a carry


def _operand_pair_held_out(left: int, right: int) -> bool:
    """About 1 in HOLDOUT_EVERY unordered operand pairs, in both orders and under both operations.
    A checksum, not `(left + right) % 4`, so the held-out pairs are not all of one result class."""
    low, high = sorted((left, right))
    return zlib.crc32(f"{low} {high}".encode()) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _arithmetic_pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, true result) for every x + y and x - y with result in 0..99, on one side of the line."""
    return [
        (f"q : {left} {operator} {right} = ?", str(left + right if operator == "+" else left - right))
        for left in range(_MAX_NUMBER + 1)
        for right in range(_MAX_NUMBER + 1)
        if _operand_pair_held_out(left, right) == held_out
        for operator in ("+", "-")
        if (left + right <= _MAX_NUMBER if operator == "+" else left >= right)
    ]


def _arithmetic_completion(rng: random.Random, result: str, flaw_rate: float) -> str:
    """An answer " a : N ." with the right N ARITHMETIC_CORRECT_RATE of the time, else N off by a little;
    with flaw_rate, a wrong format instead: cut before " .", no "a :", rambling on, or no number at all."""
    answer = int(result)
    if rng.random() >= ARITHMETIC_CORRECT_RATE:
        offset = rng.choice(_ANSWER_OFFSETS)
        answer += offset if 0 <= answer + offset <= _MAX_NUMBER else -offset  # stay in 0..99
    if rng.random() >= flaw_rate:
        return f" a : {answer} ."
    left, right = rng.randint(0, 50), rng.randint(0, 49)
    while _operand_pair_held_out(left, right):  # rambling must not leak a held-out pair into training
        left, right = rng.randint(0, 50), rng.randint(0, 49)
    return rng.choice(
        (
            f" a : {answer}",  # unfinished
            f" {answer} .",  # unlabelled
            f" a : {answer} . q : {left} + {right} = ? a : {left + right} .",  # rambles on
            " a : ? .",  # no number: never correct
        )
    )


def _arithmetic_filler(rng: random.Random) -> str:
    """True sentences about numbers that teach their order, not the sums."""
    n = rng.randint(1, _MAX_NUMBER - 3)
    smaller = rng.randint(0, n - 1)
    return rng.choice(
        (
            f"after {n} comes {n + 1} .",
            f"before {n} comes {n - 1} .",
            f"{n} is more than {smaller} .",
            f"count : {n} {n + 1} {n + 2} {n + 3} .",
        )
    )


# ---------------------------------------------------------------- copy: a verifiable reward tiny models learn
# Held-out digit strings test the rule itself (the answer's i-th digit is the one a fixed distance back),
# which a 2-layer model learns, unlike held-out sums, which need arithmetic it cannot learn from a lookup
# table. Strings of one length keep that distance fixed: with lengths 3 to 5 mixed, the 2-layer, 64-wide
# demo model answered 0% of held-out strings after SFT, with length 3 alone about 15%.
_COPY_LENGTH = 3


def _digit_pool(verb: str, held_out: bool) -> list[tuple[str, str]]:
    """(prompt, digits) for every _COPY_LENGTH-digit string, split by a checksum into train and held-out."""
    return [
        (f"q : {verb} {digits} = ?", digits)
        for digits in (" ".join(t) for t in itertools.product("0123456789", repeat=_COPY_LENGTH))
        if _copy_string_held_out(digits) == held_out
    ]


def _copy_pool(held_out: bool) -> list[tuple[str, str]]:
    return _digit_pool("copy", held_out)


def _copy_string_held_out(digits: str) -> bool:
    return zlib.crc32(digits.encode()) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1


def _copy_completion(rng: random.Random, digits: str, flaw_rate: float) -> str:
    """ " a : <digits> ." right ARITHMETIC_CORRECT_RATE of the time, else one digit changed, dropped or
    swapped; with flaw_rate, cut before " ." instead."""
    return _digit_answer(rng, digits.split(), flaw_rate)


def _digit_answer(rng: random.Random, tokens: list[str], flaw_rate: float) -> str:
    """ " a : <tokens> ." right ARITHMETIC_CORRECT_RATE of the time, else one digit changed, dropped or
    swapped; with flaw_rate, cut before " ." instead."""
    tokens = list(tokens)
    if rng.random() >= ARITHMETIC_CORRECT_RATE:
        i = rng.randrange(len(tokens))
        mistake = rng.choice(("change", "drop", "swap"))
        if mistake == "change":
            tokens[i] = str((int(tokens[i]) + rng.randint(1, 9)) % 10)
        elif mistake == "drop":
            del tokens[i]
        else:
            j = (i + 1) % len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
    answer = " a : " + " ".join(tokens)
    return answer if rng.random() < flaw_rate else answer + " ."


def _copy_filler(rng: random.Random) -> str:
    digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    while _copy_string_held_out(digits):  # held-out strings appear in eval_prompts only
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    return f"the digits {digits} again : {digits} ."


# ---------------------------------------------------------------- sort: a verifiable reward, a rule to find
# "q : sort 3 9 4 = ?" -> " a : 3 4 9 .": the answer's i-th digit is the i-th smallest of the prompt's, a
# rule (not a lookup) that held-out strings test, as copy's; the strings and their split are copy's.
def _sort_pool(held_out: bool) -> list[tuple[str, str]]:
    return _digit_pool("sort", held_out)


def _sort_completion(rng: random.Random, digits: str, flaw_rate: float) -> str:
    """The sorted digits, with copy's mistakes and flaws (so SFT is right about half the time)."""
    return _digit_answer(rng, sorted(digits.split()), flaw_rate)


def _sort_filler(rng: random.Random) -> str:
    digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    while _copy_string_held_out(digits):  # held-out strings appear in eval_prompts only
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(_COPY_LENGTH))
    return f"the digits {digits} in order : {' '.join(sorted(digits.split()))} ."


# ---------------------------------------------------------------- shared pieces
def _join_and_end(
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
class _TaskSpec:
    train_pool: list[tuple[str, str]]  # (prompt, key the completion grammar needs)
    eval_pool: list[tuple[str, str]]
    completion: Callable[[random.Random, str, float], str]
    filler: Callable[[random.Random], str]
    gold: Callable[..., list[float]]
    flaw_rate: float = UNFINISHED_RATE  # share of flawed sft / prefs completions
    corpus_sees_held_out: bool = True  # arithmetic: no, the corpus would hold eval answers


_SPECS: dict[str, _TaskSpec] = {
    "reviews": _TaskSpec(
        _review_pool(False), _review_pool(True), _review_completion, _review_filler, reviews_gold
    ),
    "support": _TaskSpec(
        _support_pool(False), _support_pool(True), _support_completion, _support_filler, support_gold
    ),
    "arithmetic": _TaskSpec(
        _arithmetic_pool(False),
        _arithmetic_pool(True),
        _arithmetic_completion,
        _arithmetic_filler,
        arithmetic_exact,
        flaw_rate=ARITHMETIC_FLAW_RATE,
        corpus_sees_held_out=False,
    ),
    "copy": _TaskSpec(
        _copy_pool(False),
        _copy_pool(True),
        _copy_completion,
        _copy_filler,
        copy_exact,
        flaw_rate=ARITHMETIC_FLAW_RATE,
        corpus_sees_held_out=False,
    ),
    "sort": _TaskSpec(
        _sort_pool(False),
        _sort_pool(True),
        _sort_completion,
        _sort_filler,
        sort_exact,
        flaw_rate=ARITHMETIC_FLAW_RATE,
        corpus_sees_held_out=False,
    ),
}


def _corpus(spec: _TaskSpec, rng: random.Random, n: int) -> list[dict]:
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


def _sft(spec: _TaskSpec, rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        prompt, key = rng.choice(spec.train_pool)
        rows.append({"prompt": prompt, "completion": spec.completion(rng, key, spec.flaw_rate)})
    return rows


def _prefs(spec: _TaskSpec, rng: random.Random, n: int) -> list[dict]:
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


def _prompts(spec: _TaskSpec, rng: random.Random, n: int) -> list[dict]:
    return [{"prompt": prompt} for prompt, _ in rng.sample(spec.train_pool, n)]


def _eval_prompts(spec: _TaskSpec, rng: random.Random, n: int) -> list[dict]:
    return [{"prompt": prompt} for prompt, _ in rng.sample(spec.eval_pool, n)]


_BUILDERS: dict[str, Callable[[_TaskSpec, random.Random, int], list[dict]]] = {
    "corpus": _corpus, "sft": _sft, "prefs": _prefs, "prompts": _prompts, "eval_prompts": _eval_prompts,
}  # fmt: skip


# ---------------------------------------------------------------- chat: the reviews task as conversations
def _chat_split(split: str, rng: random.Random, n: int) -> list[dict]:
    """The reviews task in TRL's conversational formats: a system message, then the user's review request;
    CHAT_EARLIER_TURN of the conversations first hold one finished exchange about another subject. sft:
    {"messages"} (every assistant turn is trained); prefs: {"prompt","chosen","rejected"} as message lists;
    prompts: {"prompt"} ending with the user's turn. The gold scorer is reviews_gold on the last reply;
    the corpus is the reviews corpus (generate_split returns it as is)."""
    spec = _SPECS["reviews"]
    rows = _BUILDERS[split](spec, rng, n)
    converted = []
    for row in rows:
        conversation = [{"role": "system", "content": CHAT_SYSTEM}]
        if rng.random() < CHAT_EARLIER_TURN:
            earlier, key = rng.choice(spec.train_pool)
            conversation += _exchange(earlier, spec.completion(rng, key, 0.0))
        if split == "sft":
            converted.append({"messages": conversation + _exchange(row["prompt"], row["completion"])})
            continue
        prompt = conversation + [{"role": "user", "content": row["prompt"]}]
        if split == "prefs":
            chosen, rejected = _assistant(row["chosen"]), _assistant(row["rejected"])
            converted.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            converted.append({"prompt": prompt})
    return converted


def _exchange(prompt: str, completion: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, *_assistant(completion)]


def _assistant(completion: str) -> list[dict]:
    # the plain-text demo starts replies with a space that joins them to the prompt; a turn needs none
    return [{"role": "assistant", "content": completion.strip()}]


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown demo {name} {value!r}; valid {name}s: {', '.join(valid)}")


def generate_split(task: str, split: str, seed: int = 0) -> list[dict]:
    """One split of a demo task; each split has its own RNG stream, so this is generate(task, seed)[split]."""
    _check("task", task, TASKS + SUPERVISED_TASKS)
    _check("split", split, SUPERVISED_SPLITS if task in SUPERVISED_TASKS else SPLITS)
    if task in SUPERVISED_TASKS:
        return _supervised_split(task, split, seed)
    rng = random.Random(f"{task}/{split}/{seed}")  # str seeds hash with sha512: same in every process
    if task == "chat":
        if split == "corpus":  # plain text: the same documents as the reviews task
            return generate_split("reviews", split, seed)
        return _chat_split(split, rng, SIZES[split])
    return _BUILDERS[split](_SPECS[task], rng, SIZES[split])


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


# ---------------------------------------------------------------- supervised tasks for the `task` stage


class _TaggedReview(NamedTuple):
    tokens: list[str]
    tags: list[str]  # BIO: B-PRODUCT / I-PRODUCT on the subject, B-ASPECT on an aspect, O elsewhere
    opinions: list[tuple[str, str]]  # (aspect or "it", "good" | "bad") per opinion, in order


def _tagged_review(rng: random.Random) -> _TaggedReview:
    """A finished review of the reviews language, word-tagged, with the polarity of each opinion."""
    name = rng.choice(list(_FAMILIES))
    family = _FAMILIES[name]
    subject = rng.choice(family.subjects).split()
    head = f"{rng.choice(_REVIEW_OPENERS)} the {rng.choice(_SUBJECT_MODIFIERS)}".split()
    body = _review_completion(rng, name, 0.0).split()
    tags = ["O"] * len(head) + ["B-PRODUCT"] + ["I-PRODUCT"] * (len(subject) - 1) + ["O"]
    opinions: list[tuple[str, str]] = []
    target, negated = "it", False
    for i, token in enumerate(body):
        is_aspect = token in family.aspects and i > 0 and body[i - 1] == "the"
        tags.append("B-ASPECT" if is_aspect else "O")
        if is_aspect or token == "it":
            target, negated = token, False
        elif token in NEGATIONS:
            negated = not negated
        elif token in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES:
            good = (token in POSITIVE_ADJECTIVES) != negated
            opinions.append((target, "good" if good else "bad"))
    return _TaggedReview([*head, *subject, ":", *body], tags, opinions)


def _sentiment_row(rng: random.Random) -> dict:
    """{"text", "label"}: the gold scorer's sign of the review (negation and intensifiers included)."""
    review = _tagged_review(rng)
    colon = review.tokens.index(":")
    score = reviews_gold([""], [" " + " ".join(review.tokens[colon + 1 :])])[0]
    label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    return {"text": " ".join(review.tokens), "label": label}


def _ner_row(rng: random.Random) -> dict:
    review = _tagged_review(rng)
    return {"tokens": review.tokens, "tags": review.tags}


def _summary_row(rng: random.Random) -> dict:
    """{"source": review, "target": "<subject> : <aspect> good|bad , ..."} ("no opinion" when none)."""
    review = _tagged_review(rng)
    subject = [t for t, tag in zip(review.tokens, review.tags) if tag.endswith("PRODUCT")]
    opinions = " , ".join(f"{aspect} {polarity}" for aspect, polarity in review.opinions) or "no opinion"
    return {"source": " ".join(review.tokens), "target": f"{' '.join(subject)} : {opinions}"}


_SUPERVISED_ROWS: dict[str, Callable[[random.Random], dict]] = {
    "sentiment": _sentiment_row,
    "ner": _ner_row,
    "summary": _summary_row,
}


def _supervised_split(task: str, split: str, seed: int) -> list[dict]:
    """Rows drawn from the task's own RNG stream; the test split skips any row the train split holds."""
    seen = set()
    if split == "test":
        seen = {json.dumps(row) for row in _supervised_split(task, "train", seed)}
    rng = random.Random(f"{task}/{split}/{seed}")
    rows: list[dict] = []
    while len(rows) < SUPERVISED_SIZES[split]:
        row = _SUPERVISED_ROWS[task](rng)
        if json.dumps(row) not in seen:
            rows.append(row)
    return rows
