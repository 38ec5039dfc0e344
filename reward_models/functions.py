"""Programmatic reward functions named in config as `module:function`, called and checked uniformly."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch

from pipeline.errors import UserError

RewardFunction = Callable[..., list[float]]


def load_reward_function(spec: str) -> RewardFunction:
    """Import `module:function`: only code the user names explicitly is ever imported."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"Reward function '{spec}' must be written as module:function.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"Reward function '{spec}': module '{module_name}' cannot be imported ({exc})."
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"Reward function '{spec}': '{module_name}' has no function '{attr}'.")
    return fn


def call_reward_function(
    fn: RewardFunction, name: str, prompts: list[str], completions: list[str], **kwargs
) -> torch.Tensor:
    """Call with TRL's reward-function signature; any failure or bad output is an error naming it."""
    try:
        values = fn(prompts=prompts, completions=completions, **kwargs)
    except Exception as exc:
        raise UserError(f"Reward function '{name}' raised {type(exc).__name__}: {exc}") from exc
    values = list(values.tolist() if isinstance(values, torch.Tensor) else values)
    if len(values) != len(completions):
        raise UserError(
            f"Reward function '{name}' returned {len(values)} values for {len(completions)} completions."
        )
    bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise UserError(
            f"Reward function '{name}' returned a non-finite or non-numeric value at index {bad[0]}: "
            f"{values[bad[0]]!r}."
        )
    return torch.tensor(values, dtype=torch.float32)
