"""Crash injection for the resume tests: `RLHF_CRASH_AT=<point>:<step>` SIGKILLs the process at that point.

A test hook, not a setting: the points are `train.step` (Trainer stages, after an optimizer step),
`ppo.rollout` (after sampling) and `ppo.update` (inside the PPO update) and `ppo.checkpoint` (mid-save).
The variable is read once, when a command starts (`arm_from_environment`, called by the CLI); the
training loops only compare against what was armed.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "RLHF_CRASH_AT"
_armed: str | None = None


def arm(spec: str | None) -> None:
    """Crash at `spec` (`<point>:<step>`) from now on in this process; None disarms."""
    global _armed
    _armed = spec or None


def arm_from_environment() -> None:
    arm(os.environ.get(VARIABLE))


def crash_point(point: str, step: int) -> None:
    if _armed is not None and _armed == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
