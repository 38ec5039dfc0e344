"""Turns plain dicts (from YAML) into typed dataclasses, refusing unknown keys and wrong types."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Union

from pipeline.errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class InvalidValue(ConfigError):
    """A bad value found by a config class's own checks; `build` prefixes the key with its section's path."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"Config key '{key}' {problem}")
        self.key, self.problem = key, problem


def suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from `data`; `where` is the dotted key path used in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config key '{where}' must be a mapping of keys to values, got {_kind(data)}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            valid = sorted(fields)
            raise ConfigError(
                f"Unknown config key '{_join(where, key)}'.{suggest(str(key), valid)} "
                f"Valid keys here: {', '.join(valid)}."
            )
    values = {key: coerce(hints[key], value, _join(where, key)) for key, value in data.items()}
    try:
        return cls(**values)
    except InvalidValue as exc:
        raise InvalidValue(_join(where, exc.key), exc.problem) from exc
    except ConfigError as exc:  # a check that does not name its key: name the section
        if not where or where in str(exc):
            raise
        raise ConfigError(f"Config section '{where}': {exc}") from exc
    except TypeError as exc:  # a required key is missing
        missing = [n for n, f in fields.items() if n not in values and _required(f)]
        raise ConfigError(
            f"Config section '{where}' is missing required key(s): {', '.join(missing)}."
        ) from exc


def coerce(hint: Any, value: Any, where: str) -> Any:
    """Check `value` against the type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"Config key '{where}': {value!r} has the wrong type."
        )
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"Config key '{where}' must be a list, got {_kind(value)}.")
        (item,) = typing.get_args(hint) or (Any,)
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"Config key '{where}' must be a mapping, got {_kind(value)}.")
        _, item = typing.get_args(hint) or (Any, Any)
        return {k: coerce(item, v, _join(where, k)) for k, v in value.items()}
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value is False and "no" in allowed:  # YAML 1.1 reads an unquoted no (off, false) as false
            value = "no"
        if value not in allowed:
            raise ConfigError(
                f"Config key '{where}' must be one of {', '.join(map(repr, allowed))}, got {value!r}."
                + suggest(str(value), [str(a) for a in allowed])
            )
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # PyYAML (YAML 1.1) reads 3e-4 as a string
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"Config key '{where}' must be {_article(hint)}, got {_kind(value)} {value!r}.")
    if hint is float and not math.isfinite(value):
        # No key means anything by nan or inf, and every range check lets nan through (nan <= 0 is false).
        raise ConfigError(f"Config key '{where}' must be a finite number, got {value}.")
    return value


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "nothing (null)",
    }.get(type(value), type(value).__name__)


def _article(hint: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]
