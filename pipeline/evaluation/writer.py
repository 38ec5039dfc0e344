"""Writes an evaluation's report files: the PNG plots, then report.md and report.html, both rendered from
one `Report`."""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import atomic_write_text
from pipeline.evaluation.html import HTML_FILE, render_html
from pipeline.evaluation.markdown import REPORT_FILE, render_markdown
from pipeline.evaluation.plots import (
    FRONTIER_PLOT_FILE,
    HEALTH_PLOT_FILE,
    PLOT_FILE,
    figure_png,
    frontier_figure,
    training_curves_figure,
    training_health_figure,
)
from pipeline.evaluation.report import Plot, build_report
from pipeline.evaluation.result import EvaluationResult


def draw_plots(eval_dir: Path, result: EvaluationResult, history: list[dict]) -> list[Plot]:
    """Every plot there is data for, written as a PNG into eval_dir; a plot without data is removed."""
    figures = {
        PLOT_FILE: ("training curves", training_curves_figure(history, result.snapshots, result.warnings)),
        HEALTH_PLOT_FILE: ("training health", training_health_figure(history, result.warnings)),
        FRONTIER_PLOT_FILE: ("reward-KL frontier", frontier_figure(result)),
    }
    plots = []
    for file, (title, figure) in figures.items():
        if figure is None:
            # A plot left by an earlier run would describe a different training run.
            (eval_dir / file).unlink(missing_ok=True)
            continue
        plots.append(Plot(title, file, figure_png(figure)))
        (eval_dir / file).write_bytes(plots[-1].png)
    return plots


def write_report(
    eval_dir: Path, result: EvaluationResult, samples: list[dict], history: list[dict], n_examples: int = 6
) -> Path:
    """Writes eval_dir/report.md and report.html, plus a PNG per plot there is data for; returns report.md.

    `history` is the candidate RL stage's per-step log (`history.json`), the data behind the curves."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(result, samples, draw_plots(eval_dir, result, history), n_examples)
    atomic_write_text(eval_dir / REPORT_FILE, render_markdown(report))
    atomic_write_text(eval_dir / HTML_FILE, render_html(report))
    return eval_dir / REPORT_FILE
