"""The report's plots, drawn with matplotlib's object API (no pyplot state, no display): reward and KL
against step, the training-health signals, and the reward-KL frontier of the snapshots and the evaluated
policies."""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.evaluation.formatting import display
from pipeline.evaluation.result import GOLD, EvaluationResult, Snapshot
from stages.rl.health import HealthWarning

PLOT_FILE = "training_curves.png"
HEALTH_PLOT_FILE = "training_health.png"
FRONTIER_PLOT_FILE = "reward_kl_frontier.png"


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    # A row without a step is placed by its position in the history.
    points = [
        (row.get("step", index), float(row[key]))
        for index, row in enumerate(history)
        if isinstance(row.get(key), (int, float))
    ]
    return [step for step, _ in points], [value for _, value in points]


def _figure(width: float, height: float) -> Figure:
    # A bare Figure with an Agg canvas: no pyplot global state and no display needed.
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _line(axes, steps: list[float], values: list[float], **kwargs) -> None:
    # Markers help read a short run; on a long one they only blur the line.
    axes.plot(steps, values, marker="o" if len(values) <= 100 else None, markersize=3, **kwargs)


def _mark_warnings(axes, warnings: list[HealthWarning]) -> None:
    for warning in warnings:
        axes.axvline(warning.step, color="tab:red", linestyle=":", linewidth=1)


def training_curves_figure(
    history: list[dict], snapshots: list[Snapshot] | None = None, warnings: list[HealthWarning] | None = None
) -> Figure | None:
    """Reward (the RL score, each source, the snapshots' scores) and KL against step; None without history."""
    if not history:
        return None
    figure = _figure(10, 4)
    reward_axes, kl_axes = figure.subplots(1, 2)
    steps, values = _series(history, "reward")
    if values:
        _line(reward_axes, steps, values, label="reward (RL score)")
    for key in sorted({key for row in history for key in row if key.startswith("reward/")}):
        _line(reward_axes, *_series(history, key), label=key, alpha=0.7)
    snapshot_sources = sorted({k for s in snapshots or [] for k in s.rewards})
    for source in snapshot_sources:
        points = sorted(
            (s.step, s.rewards[source])
            for s in snapshots or []
            if isinstance(s.rewards.get(source), (int, float))
        )
        reward_axes.plot(*zip(*points), marker="s", linestyle="--", label=f"snapshot {source}")
    if not reward_axes.lines:
        reward_axes.text(
            0.5, 0.5, "no 'reward' logged", ha="center", va="center", transform=reward_axes.transAxes
        )
    elif len(reward_axes.lines) > 1:
        reward_axes.legend(fontsize=8)
    steps, values = _series(history, "kl")
    if values:
        _line(kl_axes, steps, values)
    else:
        kl_axes.text(0.5, 0.5, "no 'kl' logged", ha="center", va="center", transform=kl_axes.transAxes)
    for axes, label in ((reward_axes, "mean reward"), (kl_axes, "KL to reference")):
        _mark_warnings(axes, warnings or [])
        axes.set_xlabel("step")
        axes.set_ylabel(label)
        axes.set_title(f"{label} vs step")
        axes.grid(alpha=0.3)
    return figure


def plot_training_curves(
    history: list[dict],
    path: Path,
    snapshots: list[Snapshot] | None = None,
    warnings: list[HealthWarning] | None = None,
) -> Path | None:
    """Mean reward and KL against training step, side by side, as a PNG; None when there is no history."""
    figure = training_curves_figure(history, snapshots, warnings)
    if figure is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(figure))
    return path


HEALTH_PANELS = (
    ("entropy", "policy entropy (nats/token)"),
    ("unique_fraction", "distinct completions / batch"),
    ("response_length", "response length (tokens)"),
    ("value_loss", "value loss"),
)


def training_health_figure(history: list[dict], warnings: list[HealthWarning] | None = None) -> Figure | None:
    """The signals the health warnings read, one panel each, warning steps marked; None if none was logged."""
    panels = [(key, label) for key, label in HEALTH_PANELS if _series(history, key)[1]]
    if not panels:
        return None
    figure = _figure(7, 2.6 * math.ceil(len(panels) / 2))
    grid = figure.subplots(math.ceil(len(panels) / 2), 2, squeeze=False).flatten()
    for axes, (key, label) in zip(grid, panels):
        _line(axes, *_series(history, key))
        if key == "value_loss" and min(_series(history, key)[1]) > 0:
            axes.set_yscale("log")
        _mark_warnings(axes, [w for w in warnings or [] if w.kind != "overoptimization"])
        axes.set_xlabel("step")
        axes.set_title(label)
        axes.grid(alpha=0.3)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    return figure


def frontier_figure(result: EvaluationResult) -> Figure | None:
    """Reward against KL: each snapshot's scores (one line per source, in step order) and each evaluated
    policy's mean with its CIs. Gold falling while the proxy rises along KL is over-optimisation."""
    snapshots = sorted(result.snapshots, key=lambda s: s.step)
    if not snapshots:
        return None
    figure = _figure(7, 5.2)
    axes = figure.subplots()
    sources = sorted({k for s in snapshots for k in s.rewards})
    colors = {source: f"C{index}" for index, source in enumerate(sources)}
    best = result.best_checkpoint
    judge = best.judged_by if best else (GOLD if GOLD in sources else None)
    for source in sources:
        points = [
            (s.step, s.kl, s.rewards[source])
            for s in snapshots
            if isinstance(s.kl, (int, float)) and isinstance(s.rewards.get(source), (int, float))
        ]
        if not points:
            continue
        steps, kls, values = zip(*points)
        axes.plot(
            kls,
            values,
            marker="o",
            markersize=4,
            linewidth=1,
            alpha=0.8,
            color=colors[source],
            label=f"snapshots: {source}",
        )
        if source == judge:  # step numbers once, on the judge's line
            for step, kl, value in points:
                axes.annotate(
                    str(step),
                    (kl, value),
                    fontsize=7,
                    color="dimgray",
                    xytext=(3, -9),
                    textcoords="offset points",
                )
    if best and isinstance(best.snapshot.kl, (int, float)) and best.score is not None:
        axes.plot(
            best.snapshot.kl,
            best.score,
            marker="*",
            markersize=16,
            color="gold",
            mec="black",
            linestyle="none",
            label=f"best by {judge} (step {best.snapshot.step})",
        )
    for name, policy in result.policies.items():
        kl = policy.kl_to_reference
        for source, reward in policy.rewards.items():
            if not kl or source not in colors:
                continue
            axes.errorbar(
                kl.mean,
                reward.mean,
                xerr=[[kl.mean - kl.ci_low], [kl.ci_high - kl.mean]],
                yerr=[[reward.mean - reward.ci_low], [reward.ci_high - reward.mean]],
                marker="x",
                color=colors[source],
                capsize=3,
            )
            if source == (judge or source):  # one label per policy
                axes.annotate(
                    display(name),
                    (kl.mean, reward.mean),
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
    axes.set_xlabel("KL to reference (nats per response)")
    axes.set_ylabel("mean reward")
    axes.set_title(
        "reward–KL frontier (numbers: snapshot steps; x: evaluated policies, with CIs)", fontsize=10
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure
