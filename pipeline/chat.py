"""Conversational data: checking message lists, and turning them into what a model reads through the
tokenizer's chat template.

A conversation is a list of messages `{"role": ..., "content": ...}` (TRL's conversational formats). Every
stage renders it the same way: a prompt with the template's generation prompt (what a policy continues), a
whole conversation as the template renders it (what a reward model scores), and for SFT the token ids with
a mask that is 1 exactly on the assistant turns (what carries loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant", "tool")
Conversation = list[dict[str, Any]]


def as_text(value: str | list[dict]) -> str:
    """A plain string as it is; for conversational data (a list of messages, as TRL passes prompts and
    completions) the content of the last message: the user's question, or the assistant's reply."""
    if isinstance(value, str):
        return value
    return value[-1]["content"] if value else ""


def is_conversation(value: Any) -> bool:
    """A non-empty list whose items are all dicts: how a row field says it holds messages."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def check_messages(value: Any, field: str, where: str) -> None:
    """A non-empty list of messages, each with a known `role` and a string `content` (other keys, such as
    `name` or `tool_calls`, pass through to the template)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of messages, got {value!r:.60}.")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: field '{field}' message {i} must be an object with 'role' and 'content', "
                f"got {type(message).__name__} {message!r:.60}."
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(
                f"{where}: field '{field}' message {i} has role {role!r}; expected one of {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise DataError(
                f"{where}: field '{field}' message {i} ({role}) must have a string 'content', got "
                f"{type(content).__name__} {content!r:.60}."
            )
        if role == "assistant" and not content.strip():
            raise DataError(f"{where}: field '{field}' message {i} is an empty assistant turn.")


def shared_prefix(first: Conversation, second: Conversation) -> int:
    """How many leading messages two conversations share."""
    n = 0
    while n < min(len(first), len(second)) and first[n] == second[n]:
        n += 1
    return n


def template_text(value: str) -> str:
    """A `chat_template` key: the path of a file holding a Jinja template, or the template itself."""
    path = Path(value)
    if "\n" not in value and len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    raise ConfigError(
        f"chat_template {value!r:.80} is neither an existing file nor a Jinja template string "
        "(a template contains '{{ ... }}' or '{% ... %}')."
    )


def check_template(value: str) -> None:
    """Fail at config load on a template Jinja cannot parse (not at the first conversation of a stage)."""
    import jinja2

    try:
        jinja2.Environment().parse(template_text(value))
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"chat_template {value!r:.80}: not a valid Jinja template ({exc}).") from exc


def use_template(tokenizer, chat_template: str | None, source: str, what: str) -> None:
    """Give `tokenizer` the configured template (it replaces any the checkpoint has), and refuse to go on
    without one: conversational data is never rendered by a silent fallback."""
    if chat_template:
        tokenizer.chat_template = template_text(chat_template)
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{what} is conversational (lists of messages), but the tokenizer of '{source}' has no chat "
            "template. Set `chat_template` in this stage's config: a Jinja template string or the path of a "
            "file holding one (the pretrain stage's `chat_template` gives the tokenizer it trains one)."
        )


def render_prompt(tokenizer, messages: Conversation) -> str:
    """The text a policy continues: the conversation so far and the template's generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def conversation_ids(tokenizer, messages: Conversation) -> list[int]:
    """The token ids of a whole conversation as the template renders it (TRL's tokenization of
    conversational data): what a reward model is trained on and scores."""
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def assistant_tokens(
    tokenizer, messages: Conversation, first_trained: int = 0
) -> tuple[list[int], list[int]]:
    """(ids of the rendered conversation, mask): the mask is 1 on the tokens of every assistant turn at index
    >= `first_trained` (its content and the template's end-of-turn text), 0 elsewhere.

    A turn's text is where the rendering of the messages before it plus the generation prompt ends and the
    rendering up to and including it ends. This needs a template that renders a conversation's beginning the
    same way whatever follows (true of the common ones); one that does not is refused, not guessed at.
    Tokens are marked by their character offsets, so a merge across a turn boundary cannot shift the mask.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < first_trained:
            continue
        start = len(_rendered_prefix(tokenizer, messages, i, text, add_generation_prompt=True))
        end = len(_rendered_prefix(tokenizer, messages, i + 1, text))
        spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start <= begin < end for start, end in spans) and finish > begin)
        for begin, finish in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), mask


def _rendered_prefix(
    tokenizer, messages: Conversation, n: int, full: str, add_generation_prompt: bool = False
):
    if n == len(messages) and not add_generation_prompt:
        return full
    prefix = tokenizer.apply_chat_template(
        messages[:n], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not full.startswith(prefix):
        raise DataError(
            "The chat template renders the start of a conversation differently once later turns follow "
            f"(after message {n - 1}), so the assistant turns cannot be told apart by rendering; use a "
            "template that renders earlier turns the same way whatever follows."
        )
    return prefix


def display(prompt: str | Conversation) -> str:
    """One line for a prompt in reports and logs; also a hashable key for a conversation."""
    if isinstance(prompt, str):
        return prompt
    return " | ".join(f"{m['role']}: {m['content']}" for m in prompt)


def reward_inputs(prompts: list, completions: list[str]) -> tuple[list, list]:
    """What reward functions receive, as in TRL: plain strings, or for conversational prompts the messages
    and each completion as a one-message assistant turn."""
    if prompts and not isinstance(prompts[0], str):
        return prompts, [[{"role": "assistant", "content": c}] for c in completions]
    return prompts, completions
