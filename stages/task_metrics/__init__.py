"""The task stage's metrics as `evaluate` modules, one folder each, loaded offline from this package:
`task_metrics.load("accuracy_f1")` is `evaluate.load("<this folder>/accuracy_f1")` (hub metrics cannot be
fetched).

evaluate copies a metric script into its module cache and scans it for imports; its scanner misreads
`import a, b`, so the scripts keep one import per line and import nothing from this project.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("accuracy_f1", "seqeval_lite", "bleu_chrf")


def load(name: str):
    """An `evaluate.EvaluationModule` of this package by name."""
    import evaluate

    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; the project's metrics: {', '.join(NAMES)}")
    return evaluate.load(str(METRICS_DIR / name))
