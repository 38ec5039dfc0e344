"""Crash injection for the resume tests: `RLHF_CRASH_AT=<point>:<step>` SIGKILLs the process at that point.

A test hook, not a setting: the points are `train.step` (Trainer stages, after an optimizer step),
`ppo.rollout` (after sampling) and `ppo.update` (inside the PPO update) and `ppo.checkpoint` (mid-save).
"""

from __future__ import annotations

import os
import signal


def crash_point(point: str, step: int) -> None:
    if os.environ.get("RLHF_CRASH_AT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
