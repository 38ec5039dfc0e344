"""Loads the TRL data formats from local files, the embedded demo tasks or the hub, and validates them.

A data source is a config string:
  path/to/file.jsonl | .json | .parquet   a local file
  demo:TASK/SPLIT                          the project's generated demo data (see pipeline/demo/)
  hf:ORG/NAME[:SPLIT]                      a hub dataset (default split: train)
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import demo
from pipeline.chat import check_messages, is_conversation, shared_prefix
from pipeline.errors import DataError

TEXT = ("text",)
PROMPT_COMPLETION = ("prompt", "completion")
PREFERENCE = ("prompt", "chosen", "rejected")
PROMPT_ONLY = ("prompt",)
CLASSIFICATION = ("text", "label")  # label: a string or an integer
TOKEN_TAGS = ("tokens", "tags")  # lists of strings of one length: a tag per token
SOURCE_TARGET = ("source", "target")
LIST_COLUMNS = ("tokens", "tags")
# The formats that also come conversational (fields holding lists of messages), and the field sets each
# accepts then: SFT as one `messages` list or a prompt/completion pair; preferences with an explicit prompt or
# an implicit one (the messages `chosen` and `rejected` share); prompts as the conversation so far.
CONVERSATIONAL = {
    PROMPT_COMPLETION: (("messages",), ("prompt", "completion")),
    PREFERENCE: (("prompt", "chosen", "rejected"), ("chosen", "rejected")),
    PROMPT_ONLY: (("prompt",),),
}


def load_rows(source: str, columns: Sequence[str], what: str = "data") -> list[dict[str, Any]]:
    """Rows with exactly `columns`, each a non-empty string (`label` may be an integer, `tokens` and `tags`
    are non-empty lists of strings); anything else is a DataError naming the row.

    A format in CONVERSATIONAL may instead come as message lists, decided by the first row: then every row
    must be conversational too, and a preference pair with an implicit prompt comes back with an explicit
    one (the messages `chosen` and `rejected` share, as TRL extracts it)."""
    if not source:
        raise DataError(
            f"No {what} source is set: give a .jsonl/.json/.parquet path, demo:TASK/SPLIT or hf:NAME."
        )
    rows, origin, places = _read(source)
    if not rows:
        raise DataError(f"{origin} is empty: expected rows with fields {', '.join(columns)}.")
    columns = tuple(columns)
    chat = columns in CONVERSATIONAL and _has_messages(rows[0])
    for row, place in zip(rows, places):
        where = f"{origin}, {place}"
        has_messages = _has_messages(row)
        if columns in CONVERSATIONAL and has_messages != chat:
            raise DataError(
                f"{where}: {'plain strings' if chat else 'lists of messages'}, but the first row holds "
                f"{'lists of messages' if chat else 'plain strings'}: a data source is either conversational "
                "or standard, not both."
            )
        if columns not in CONVERSATIONAL and has_messages:
            raise DataError(
                f"{where}: lists of messages are not accepted in this data (only in SFT, preference and "
                f"prompt data); it must have the fields {', '.join(columns)}."
            )
        if chat:
            check_conversation_row(row, columns, where)
        else:
            check_row(row, columns, where)
    return [explicit_prompt(row) for row in rows] if chat else rows


def is_conversational(rows: list[dict[str, Any]]) -> bool:
    """Whether rows from load_rows are conversational (their fields hold message lists)."""
    return bool(rows) and _has_messages(rows[0])


def _has_messages(row: Any) -> bool:
    return isinstance(row, dict) and any(is_conversation(value) for value in row.values())


def check_conversation_row(row: Any, columns: tuple[str, ...], where: str) -> None:
    """A conversational row of format `columns`: one of its accepted field sets, each field a message list,
    and the turns the format needs (an assistant turn to train on, a prompt that awaits an answer)."""
    variants = CONVERSATIONAL[columns]
    names = " or ".join("(" + ", ".join(v) + ")" for v in variants)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with fields {names}, got {type(row).__name__}.")
    if tuple(sorted(row)) not in [tuple(sorted(v)) for v in variants]:
        raise DataError(
            f"{where}: fields {', '.join(map(str, row))}; conversational rows of this data must have exactly "
            f"the fields {names}."
        )
    for field in row:
        check_messages(row[field], field, where)
    for field in ("messages", "completion", "chosen", "rejected"):
        if field in row and not any(m["role"] == "assistant" for m in row[field]):
            raise DataError(f"{where}: field '{field}' has no assistant turn, so there is nothing to learn.")
    if "chosen" in row:
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair says nothing.")
        if "prompt" not in row:
            n = shared_prefix(row["chosen"], row["rejected"])
            if n == 0 or n == min(len(row["chosen"]), len(row["rejected"])):
                raise DataError(
                    f"{where}: without a 'prompt' field, 'chosen' and 'rejected' must start with the same "
                    "messages (the implicit prompt) and then differ; they share "
                    f"{'no message' if n == 0 else 'all of the shorter one'}."
                )
    elif columns == PROMPT_ONLY and row["prompt"][-1]["role"] == "assistant":
        raise DataError(
            f"{where}: the prompt ends with an assistant turn; a prompt ends where the model is to answer."
        )


def explicit_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A preference pair with an implicit prompt as {prompt, chosen, rejected}; any other row unchanged."""
    if "chosen" not in row or "prompt" in row:
        return row
    n = shared_prefix(row["chosen"], row["rejected"])
    return {"prompt": row["chosen"][:n], "chosen": row["chosen"][n:], "rejected": row["rejected"][n:]}


def check_row(row: Any, columns: Sequence[str], where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected a JSON object with fields {', '.join(columns)}, got {type(row).__name__}."
        )
    missing = [c for c in columns if c not in row]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(missing)}; "
            f"this data must have fields {', '.join(columns)}."
        )
    extra = [c for c in row if c not in columns]
    if extra:
        raise DataError(
            f"{where}: unexpected field(s) {', '.join(map(str, extra))}; "
            "this data must have exactly the fields "
            f"{', '.join(columns)}."
        )
    for column in columns:
        value = row[column]
        if column == "label" and isinstance(value, int) and not isinstance(value, bool):
            continue
        if column in LIST_COLUMNS:
            check_string_list(value, column, where)
            continue
        if not isinstance(value, str):
            expected = "a string or an integer" if column == "label" else "a string"
            raise DataError(
                f"{where}: field '{column}' must be {expected}, got {type(value).__name__} {value!r:.60}."
            )
        if not value.strip():
            raise DataError(f"{where}: field '{column}' is empty.")
    if "chosen" in columns and row["chosen"] == row["rejected"]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical, so the pair says nothing.")
    if "tags" in columns and len(row["tags"]) != len(row["tokens"]):
        raise DataError(
            f"{where}: {len(row['tokens'])} tokens but {len(row['tags'])} tags; each token needs one tag."
        )


def check_string_list(value: Any, column: str, where: str) -> None:
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field '{column}' must be a list of strings, got {type(value).__name__} {value!r:.60}."
        )
    if not value:
        raise DataError(f"{where}: field '{column}' is an empty list.")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(
                f"{where}: field '{column}' item {i} must be a non-empty string, got {item!r:.60}."
            )


def _read(source: str) -> tuple[list[Any], str, list[str]]:
    """(rows, where they came from, where each row is: 'line N' in a .jsonl file, 'row N' elsewhere)."""
    if source.startswith("demo:"):
        task, _, split = source.removeprefix("demo:").partition("/")
        try:
            return _numbered(demo.generate_split(task, split), f"demo data '{source}'")
        except ValueError as exc:
            raise DataError(f"Data source '{source}': {exc}") from exc
    if source.startswith("hf:"):
        return _numbered(_read_hub(source.removeprefix("hf:")), f"hub dataset '{source}'")
    path = Path(source)
    if not path.exists():
        raise DataError(f"Data file '{source}' does not exist.")
    if path.is_dir():
        raise DataError(f"Data source '{source}' is a directory; give a .jsonl, .json or .parquet file.")
    readers = {".json": _read_json, ".parquet": _read_parquet}
    if path.suffix == ".jsonl":
        lines, rows = _read_jsonl(path)
        return rows, f"file '{source}'", [f"line {n}" for n in lines]
    if path.suffix not in readers:
        raise DataError(
            f"Data file '{source}' has suffix '{path.suffix}'; expected .jsonl, .json or .parquet."
        )
    return _numbered(readers[path.suffix](path), f"file '{source}'")


def _numbered(rows: list[Any], origin: str) -> tuple[list[Any], str, list[str]]:
    return rows, origin, [f"row {n}" for n in range(1, len(rows) + 1)]


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Data file '{path}' cannot be read: {exc.strerror or exc}.") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"File '{path}', line {line}: bytes that are not UTF-8 (at byte {exc.start})."
        ) from exc


def _read_jsonl(path: Path) -> tuple[list[int], list[Any]]:
    """(line number of each row, rows); blank lines are skipped."""
    numbers, rows = [], []
    # split on "\n" only: splitlines() also breaks at U+2028 and friends, which JSON strings may hold raw
    for number, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"File '{path}', line {number}: not valid JSON ({exc.msg}).") from exc
        numbers.append(number)
    return numbers, rows


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(_decode(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"File '{path}': not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(data, list):
        raise DataError(f"File '{path}': expected a JSON list of objects, got {type(data).__name__}.")
    return data


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"File '{path}': not a readable parquet file ({exc}).") from exc


def _read_hub(name: str) -> list[Any]:
    import datasets

    name, _, split = name.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train").to_list()
    except Exception as exc:  # network, missing dataset, missing split: all the user's to fix
        raise DataError(
            f"Hub dataset '{name}' (split '{split or 'train'}') could not be loaded: {exc}"
        ) from exc


def split_rows(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out split: (train, eval). Keeps at least one row on each side."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def train_and_eval(
    source: str, eval_source: str | None, fraction: float, columns: Sequence[str], seed: int, what: str
) -> tuple[list[dict], list[dict]]:
    rows = load_rows(source, columns, what)
    if eval_source:
        return rows, load_rows(eval_source, columns, f"{what} (eval)")
    return split_rows(rows, fraction, seed)


def check_sources(source: str, eval_source: str | None, columns: Sequence[str], what: str) -> None:
    """Validate a stage's data (and its eval data) up front, before any stage of the run trains."""
    load_rows(source, columns, what)
    if eval_source:
        load_rows(eval_source, columns, f"{what} (eval)")
