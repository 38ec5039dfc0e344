"""Human-readable report of the evaluation step: a verdict, a before/after table, training curves, samples.

Reads the `eval/metrics.json` schema (policies → estimates, differences, settings, training).
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.stats import Estimate

GOLD = "gold"
PLOT_FILE = "training_curves.png"
REPORT_FILE = "report.md"
MISSING = "—"
MAX_SHOWN_CHARS = 300


# ---------------------------------------------------------------- number formatting


def _fmt(value: float | None) -> str:
    """Three decimals everywhere, so columns line up and no number looks more precise than another."""
    if value is None:
        return MISSING
    text = f"{float(value):.3f}"
    # Rounding -0.0004 gives "-0.000", which reads as a sign that is not there.
    return "0.000" if text == "-0.000" else text


def _fmt_estimate(estimate: dict | None) -> str:
    if not estimate:
        return MISSING
    return f"{_fmt(estimate['mean'])} [{_fmt(estimate['ci_low'])}, {_fmt(estimate['ci_high'])}]"


def _as_estimate(estimate: dict) -> Estimate:
    return Estimate(
        mean=float(estimate["mean"]),
        ci_low=float(estimate["ci_low"]),
        ci_high=float(estimate["ci_high"]),
        n=int(estimate["n"]),
    )


def _ci_label(metrics: dict) -> str:
    confidence = float(metrics.get("settings", {}).get("confidence", 0.95))
    return f"{confidence * 100:g}% CI"


def _display(policy: str) -> str:
    return policy.upper()


# ---------------------------------------------------------------- the table


def _reward_sources(metrics: dict) -> list[str]:
    """Every reward source named anywhere, differences first, in the order the metrics list them."""
    sources = list(metrics.get("differences", {}))
    for policy in metrics.get("policies", {}).values():
        sources += [source for source in policy.get("rewards", {}) if source not in sources]
    return sources


def _table_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the before/after/difference table; shared by markdown and terminal output."""
    baseline, candidate = metrics["baseline"], metrics["candidate"]
    before = metrics.get("policies", {}).get(baseline, {})
    after = metrics.get("policies", {}).get(candidate, {})
    differences = metrics.get("differences", {})
    header = ["metric", f"{_display(baseline)} (before)", f"{_display(candidate)} (after)", "difference"]
    rows = [
        [
            f"reward: {source}",
            _fmt_estimate(before.get("rewards", {}).get(source)),
            _fmt_estimate(after.get("rewards", {}).get(source)),
            _fmt_estimate(differences.get(source)),
        ]
        for source in _reward_sources(metrics)
    ]
    # The evaluation computes paired differences for rewards only; KL and length are shown per policy.
    for key, label in (("kl_to_reference", "KL to reference"), ("response_length", "response length")):
        rows.append([label, _fmt_estimate(before.get(key)), _fmt_estimate(after.get(key)), MISSING])
    return header, rows


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_escape_cell(cell) for cell in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(_escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_table(metrics: dict) -> str:
    """The before/after/difference table as aligned plain text, for the terminal."""
    header, rows = _table_rows(metrics)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        # Metric names read left to right; numbers right-aligned so their brackets line up.
        numbers = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([cells[0].ljust(widths[0]), *numbers]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    title = f"mean [{_ci_label(metrics)}]"
    return "\n".join([title, line(header), rule, *(line(row) for row in rows)])


# ---------------------------------------------------------------- the verdict


def _interval(metrics: dict, estimate: Estimate) -> str:
    return f"{_ci_label(metrics)} {_fmt(estimate.ci_low)} to {_fmt(estimate.ci_high)}"


def _difference_sentence(metrics: dict, source: str, difference: Estimate) -> str:
    baseline, candidate = _display(metrics["baseline"]), _display(metrics["candidate"])
    direction = "higher" if difference.mean >= 0 else "lower"
    if difference.ci_low > 0:
        conclusion = "a real improvement."
    elif difference.ci_high < 0:
        conclusion = "a real decline."
    else:
        conclusion = "not distinguishable from zero, so this evaluation shows no reliable change."
    return (
        f"The {candidate} policy's mean {source} score is {_fmt(abs(difference.mean))} {direction} "
        f"than the {baseline} policy's ({_interval(metrics, difference)}): {conclusion}"
    )


def _proxy_warning(metrics: dict, differences: dict[str, Estimate]) -> str | None:
    """Proxy rewards that rose for sure while gold did not: the signature of reward hacking."""
    if differences[GOLD].ci_low > 0:
        return None
    risen = [source for source, estimate in differences.items() if source != GOLD and estimate.ci_low > 0]
    if not risen:
        return None
    evidence = " and ".join(
        f"the {source} score rose by {_fmt(estimate.mean)} ({_interval(metrics, estimate)})"
        for source, estimate in differences.items()
        if source in risen
    )
    return (
        f"Yet {evidence} while the gold score did not: "
        "the policy may be fooling the reward model rather than getting better."
    )


def _verdict(metrics: dict) -> str:
    differences = {source: _as_estimate(value) for source, value in metrics.get("differences", {}).items()}
    if not differences:
        return "No reward difference between the two policies was computed, so there is no verdict."
    if GOLD not in differences:
        # Without a gold scorer the only judge is a proxy, which RL optimised against.
        source = next(iter(differences))
        return (
            _difference_sentence(metrics, source, differences[source])
            + " There is no gold scorer for this task, so this is the proxy's own judgement:"
            " a rise can also mean the policy learned to exploit it."
        )
    sentences = [_difference_sentence(metrics, GOLD, differences[GOLD])]
    warning = _proxy_warning(metrics, differences)
    if warning:
        sentences.append(warning)
    return " ".join(sentences)


# ---------------------------------------------------------------- settings and samples


def _key_values(block: dict) -> list[str]:
    return [f"- {key}: {value}" for key, value in block.items()]


def _shown(text: str) -> str:
    """Text as a single line that fits in a table cell: newlines made visible, long text cut."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "…"


def _code_span(text: str, in_table: bool) -> str:
    """Markdown code span that survives backticks in the text (and `|` inside a table)."""
    text = _shown(text)
    if not text:
        return "*(empty)*"
    longest_run, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest_run = max(longest_run, run)
    fence = "`" * (longest_run + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    span = f"{fence}{padded}{fence}"
    # GitHub-flavoured markdown splits table cells on `|` even inside code spans, unless escaped.
    return _escape_cell(span) if in_table else span


def _first_samples(samples: list[dict], n_examples: int) -> list[tuple[str, dict[str, dict]]]:
    """The first `n_examples` prompts in sample order, each with its lowest-index sample per policy."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in samples:
        chosen = by_prompt.setdefault(row["prompt"], {})
        current = chosen.get(row["policy"])
        if current is None or row.get("sample_index", 0) < current.get("sample_index", 0):
            chosen[row["policy"]] = row
    return list(by_prompt.items())[:n_examples]


def _completion_cell(row: dict) -> str:
    # A policy with no sample for this prompt shows a dash, not an "(empty)" completion.
    return _code_span(row.get("completion", ""), in_table=True) if row else MISSING


def _example_block(number: int, prompt: str, rows: dict[str, dict], baseline: str, candidate: str) -> str:
    before, after = rows.get(baseline, {}), rows.get(candidate, {})
    sources = list(before.get("rewards", {}))
    sources += [source for source in after.get("rewards", {}) if source not in sources]
    lines = [
        f"**Prompt {number}.** {_code_span(prompt, in_table=False)}",
        "",
        f"| | {_display(baseline)} (before) | {_display(candidate)} (after) |",
        "|---|---|---|",
        f"| completion | {_completion_cell(before)} | {_completion_cell(after)} |",
    ]
    for source in sources:
        before_value = before.get("rewards", {}).get(source)
        after_value = after.get("rewards", {}).get(source)
        lines.append(f"| {_escape_cell(source)} | {_fmt(before_value)} | {_fmt(after_value)} |")
    return "\n".join(lines)


def _examples_section(samples: list[dict], baseline: str, candidate: str, n_examples: int) -> str:
    chosen = _first_samples(samples, n_examples)
    if not chosen:
        return "No samples were recorded."
    intro = f"The first sample of each policy on the first {len(chosen)} evaluation prompts."
    blocks = [
        _example_block(number, prompt, rows, baseline, candidate)
        for number, (prompt, rows) in enumerate(chosen, start=1)
    ]
    return "\n\n".join([intro, *blocks])


# ---------------------------------------------------------------- the report


def render_markdown(metrics: dict, samples: list[dict], plot_file: str | None, n_examples: int = 6) -> str:
    """The whole report as markdown; `plot_file` is the training-curve image path relative to the report."""
    baseline, candidate = metrics["baseline"], metrics["candidate"]
    header, rows = _table_rows(metrics)
    sections = [
        f"# Evaluation: {_display(candidate)} vs {_display(baseline)}",
        _verdict(metrics),
        "## Results",
        f"Mean [{_ci_label(metrics)}] of each metric over the evaluation samples; the difference is "
        f"{_display(candidate)} minus {_display(baseline)} on the same prompts (paired bootstrap).",
        _markdown_table(header, rows),
        "## Settings",
        "\n".join(_key_values(metrics.get("settings", {}))) or "No settings recorded.",
    ]
    if metrics.get("training"):
        sections += ["## Training", "\n".join(_key_values(metrics["training"]))]
    if plot_file:
        sections += ["## Training curves", f"![training curves]({plot_file})"]
    sections += ["## Sample completions", _examples_section(samples, baseline, candidate, n_examples)]
    return "\n\n".join(sections) + "\n"


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    # A row without a step is placed by its position in the history.
    points = [
        (row.get("step", index), float(row[key]))
        for index, row in enumerate(history)
        if row.get(key) is not None
    ]
    return [step for step, _ in points], [value for _, value in points]


def plot_training_curves(history: list[dict], path: Path) -> Path | None:
    """Mean reward and KL against training step, side by side, as a PNG; None when there is no history."""
    if not history:
        return None
    # A bare Figure with an Agg canvas: no pyplot global state and no display needed.
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    panels = (("reward", "mean reward"), ("kl", "KL to reference"))
    for axes, (key, label) in zip(figure.subplots(1, 2), panels):
        steps, values = _series(history, key)
        if values:
            # Markers help read a short run; on a long one they only blur the line.
            axes.plot(steps, values, marker="o" if len(values) <= 100 else None, markersize=3)
        else:
            axes.text(0.5, 0.5, f"no '{key}' logged", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("step")
        axes.set_ylabel(label)
        axes.set_title(f"{label} vs step")
        axes.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    # A reader (or a crash) never sees a half-written report.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_report(eval_dir: Path, metrics: dict, samples: list[dict], history: list[dict]) -> Path:
    """Writes eval_dir/report.md, plus training_curves.png when there is history; returns the report path."""
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    plot_path = eval_dir / PLOT_FILE
    plot = plot_training_curves(history, plot_path)
    if plot is None:
        # A plot left by an earlier run would describe a different training run.
        plot_path.unlink(missing_ok=True)
    report_path = eval_dir / REPORT_FILE
    _write_text_atomic(report_path, render_markdown(metrics, samples, PLOT_FILE if plot else None))
    return report_path
