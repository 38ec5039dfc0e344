"""The demo "reviews" task's gold scorer as the peer harness wants it: gold(text) -> float.

Loaded by file path from the peer virtual environments, which do not have this project installed, so the
repository root is put on sys.path first. pipeline.demo imports nothing beyond the standard library.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from pipeline.demo.reviews import score_review  # noqa: E402


def gold(text: str) -> float:
    return float(score_review(text))
