"""The "chat" demo task: the reviews task in TRL's conversational formats, a system message and the user's
review request, sometimes after one earlier exchange. Its gold scorer is the reviews task's,
`reviews_gold`, on the last assistant reply; its corpus is the reviews corpus."""

from __future__ import annotations

import random

from pipeline.demo import reviews
from pipeline.demo.common import BUILDERS

CHAT_SYSTEM = "you write short reviews of things people buy , watch and read ."
CHAT_EARLIER_TURN = 0.3  # share of chat rows whose conversation already holds one review exchange


def chat_split(split: str, rng: random.Random, n: int) -> list[dict]:
    """The reviews split as conversations; CHAT_EARLIER_TURN of them first hold one finished exchange about
    another subject. sft: {"messages"} (every assistant turn is trained); prefs: {"prompt","chosen",
    "rejected"} as message lists; prompts: {"prompt"} ending with the user's turn."""
    spec = reviews.SPEC
    rows = BUILDERS[split](spec, rng, n)
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
