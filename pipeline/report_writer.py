"""Writes an evaluation's report files: report.md (pipeline/report.py), report.html (pipeline/html_report.py)
and the PNG plots both show. Kept apart from the two renderers so that neither imports the other."""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import atomic_write_text
from pipeline.html_report import render_html
from pipeline.report import (
    FRONTIER_PLOT_FILE,
    HEALTH_PLOT_FILE,
    HTML_FILE,
    PLOT_FILE,
    REPORT_FILE,
    figure_png,
    frontier_figure,
    render_markdown,
    training_curves_figure,
    training_health_figure,
)


def write_report(
    eval_dir: Path,
    metrics: dict,
    samples: list[dict],
    history: list[dict],
    snapshots: list[dict] | None = None,
    n_examples: int = 6,
) -> Path:
    """Writes eval_dir/report.md and report.html, plus a PNG per plot there is data for; returns report.md.

    `snapshots` defaults to `metrics["snapshots"]`.
    """
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    snapshots = metrics.get("snapshots") if snapshots is None else snapshots
    warnings = metrics.get("warnings") or []
    figures = {
        PLOT_FILE: ("training curves", training_curves_figure(history, snapshots, warnings)),
        HEALTH_PLOT_FILE: ("training health", training_health_figure(history, warnings)),
        FRONTIER_PLOT_FILE: ("reward-KL frontier", frontier_figure({**metrics, "snapshots": snapshots})),
    }
    images: dict[str, tuple[str, bytes]] = {}
    for file, (title, figure) in figures.items():
        if figure is None:
            # A plot left by an earlier run would describe a different training run.
            (eval_dir / file).unlink(missing_ok=True)
            continue
        images[file] = (title, figure_png(figure))
        (eval_dir / file).write_bytes(images[file][1])
    plots = {title: file for file, (title, _) in images.items() if file != PLOT_FILE}
    markdown = render_markdown(
        metrics, samples, PLOT_FILE if PLOT_FILE in images else None, n_examples, plots
    )
    report_path = eval_dir / REPORT_FILE
    atomic_write_text(report_path, markdown)
    html = render_html(metrics, samples, list(images.values()), n_examples)
    atomic_write_text(eval_dir / HTML_FILE, html)
    return report_path
