"""The "support" demo task: a customer's complaint and the agent's reply ("customer : my order is late .
agent :" -> " sorry for the delay , i will refund you ."). Its hidden gold scorer, `support_gold`, measures
the reply's politeness and helpfulness: apology +1, each distinct concrete action +1.5, thanks +0.5, each
distinct rude phrase -1.5, -1 when unfinished. Held-out issues appear only in the corpus and eval_prompts."""

from __future__ import annotations

import random

from pipeline.chat import as_text
from pipeline.demo.common import HOLDOUT_EVERY, TaskSpec, finish_and_clip, join_and_end

# support cues: token sequence -> (canonical cue, weight); each canonical cue counts once per reply,
# so "sorry ... sorry" or "refund ... refund" earns no more than saying it once.
SUPPORT_CUES: dict[tuple[str, ...], tuple[str, float]] = {
    ("sorry",): ("apology", 1.0),
    ("apologize",): ("apology", 1.0),
    ("refund",): ("refund", 1.5),
    ("replace",): ("replace", 1.5),
    ("replacement",): ("replace", 1.5),
    ("track",): ("track", 1.5),
    ("escalate",): ("escalate", 1.5),
    ("thanks",): ("thanks", 0.5),
    ("thank",): ("thanks", 0.5),
    ("not", "my", "problem"): ("not my problem", -1.5),
    ("read", "the", "manual"): ("read the manual", -1.5),
    ("wait",): ("wait", -1.5),
    ("your", "fault"): ("your fault", -1.5),
    ("call", "someone", "else"): ("call someone else", -1.5),
    ("can", "not", "help"): ("can not help", -1.5),
}

ISSUES = (
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
REPLY_PHRASES: dict[str, tuple[str, ...]] = {
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


# ---------------------------------------------------------------- gold scorer
def score_support_reply(completion: str) -> float:
    """Politeness + helpfulness of one agent reply: apology +1, each distinct concrete action
    (refund, replace, track, escalate) +1.5, thanks +0.5, each distinct rude phrase -1.5."""
    tokens = completion.split()
    found: dict[str, float] = {}
    for i in range(len(tokens)):
        for cue, (name, weight) in SUPPORT_CUES.items():
            if tuple(tokens[i : i + len(cue)]) == cue:
                found[name] = weight
    return finish_and_clip(sum(found.values()), tokens)


def support_gold(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of the "support" task; the prompt plays no part (kwargs: TRL compatibility)."""
    return [score_support_reply(as_text(completion)) for completion in completions]


# ---------------------------------------------------------------- generator
def _pool(held_out: bool) -> list[tuple[str, str]]:
    """(prompt, issue) for every greeting x tail x issue on one side of the hold-out line."""
    return [
        (f"customer : {greeting}{issue}{tail} . agent :", issue)
        for index, issue in enumerate(ISSUES)
        if (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == held_out
        for greeting in _GREETINGS
        for tail in _COMPLAINT_TAILS
    ]


def _completion(rng: random.Random, issue: str, unfinished_rate: float) -> str:
    """1-3 phrases from a mix of polite, helpful, neutral and rude ones; the reply ignores the issue."""
    names, weights = list(_REPLY_CATEGORY_WEIGHTS), list(_REPLY_CATEGORY_WEIGHTS.values())
    categories = rng.choices(names, weights=weights, k=3)
    phrases: list[str] = []
    for category in categories[: rng.randint(1, 3)]:
        unused = [p for p in REPLY_PHRASES[category] if p not in phrases]  # the data never repeats itself
        phrases.append(rng.choice(unused))
    return join_and_end(rng, [p.split() for p in phrases], _REPLY_JOINERS, unfinished_rate)


def _filler(rng: random.Random) -> str:
    phrase = rng.choice(REPLY_PHRASES[rng.choice(list(REPLY_PHRASES))])
    return rng.choice(
        (
            f"a customer wrote that {rng.choice(ISSUES)} .",
            f"the agent said {phrase} .",
            f"customer : {rng.choice(ISSUES)} .",
            f"agent : {phrase} .",
        )
    )


SPEC = TaskSpec(_pool(False), _pool(True), _completion, _filler, support_gold)
