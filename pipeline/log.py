"""One place for user-facing progress lines (stderr, flushed, main process only)."""

from __future__ import annotations

import sys

from pipeline.distributed import is_main


def log(message: str) -> None:
    if is_main():
        print(message, file=sys.stderr, flush=True)
