"""One place for user-facing progress lines (stderr, flushed, main process only)."""

from __future__ import annotations

import os
import sys


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def log(message: str) -> None:
    if is_main_process():
        print(message, file=sys.stderr, flush=True)
