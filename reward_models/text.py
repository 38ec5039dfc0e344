"""The text a reward function scores, whatever form TRL hands it in."""

from __future__ import annotations


def as_text(value: str | list[dict]) -> str:
    """A plain string as it is; for conversational data (a list of messages, as TRL passes prompts and
    completions) the content of the last message: the user's question, or the assistant's reply."""
    if isinstance(value, str):
        return value
    return value[-1]["content"] if value else ""
