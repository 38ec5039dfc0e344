"""Human-readable report of the evaluation: verdict, warnings, tables, training plots, samples side by side.

Reads the `eval/metrics.json` schema (policies → estimates, differences, warnings, snapshots, settings,
training) and writes `report.md` with PNG plots beside it; `pipeline.html_report` renders the same
content as one self-contained `report.html`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.stats import Estimate

GOLD = "gold"
PLOT_FILE = "training_curves.png"
HEALTH_PLOT_FILE = "training_health.png"
FRONTIER_PLOT_FILE = "reward_kl_frontier.png"
REPORT_FILE = "report.md"
HTML_FILE = "report.html"
MISSING = "—"
MAX_SHOWN_CHARS = 300


# ---------------------------------------------------------------- number formatting


def fmt(value: float | None) -> str:
    """Three decimals everywhere, so columns line up and no number looks more precise than another."""
    if value is None:
        return MISSING
    text = f"{float(value):.3f}"
    # Rounding -0.0004 gives "-0.000", which reads as a sign that is not there.
    return "0.000" if text == "-0.000" else text


def fmt_estimate(estimate: dict | None) -> str:
    if not estimate:
        return MISSING
    return f"{fmt(estimate['mean'])} [{fmt(estimate['ci_low'])}, {fmt(estimate['ci_high'])}]"


def _as_estimate(estimate: dict) -> Estimate:
    return Estimate(
        mean=float(estimate["mean"]),
        ci_low=float(estimate["ci_low"]),
        ci_high=float(estimate["ci_high"]),
        n=int(estimate["n"]),
    )


def ci_label(metrics: dict) -> str:
    confidence = float(metrics.get("settings", {}).get("confidence", 0.95))
    return f"{confidence * 100:g}% CI"


def display(policy: str) -> str:
    return policy.upper()


# ---------------------------------------------------------------- the table


def reward_sources(metrics: dict) -> list[str]:
    """Every reward source named anywhere, differences first, in the order the metrics list them."""
    sources = list(metrics.get("differences", {}))
    for policy in metrics.get("policies", {}).values():
        sources += [source for source in policy.get("rewards", {}) if source not in sources]
    return sources


def policy_order(metrics: dict) -> list[str]:
    """Baseline, candidate, then any other evaluated policies in the order they were evaluated."""
    baseline, candidate = metrics["baseline"], metrics["candidate"]
    others = [name for name in metrics.get("policies", {}) if name not in (baseline, candidate)]
    return [baseline, candidate, *others]


def column_label(metrics: dict, policy: str) -> str:
    suffix = {metrics["baseline"]: " (before)", metrics["candidate"]: " (after)"}.get(policy, "")
    return display(policy) + suffix


def _distinct_keys(metrics: dict) -> list[str]:
    keys = {key for p in metrics.get("policies", {}).values() for key in p if key.startswith("distinct_")}
    return sorted(keys, key=lambda key: int(key.split("_")[1]))


def table_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one column per policy, then candidate minus baseline);
    shared by markdown, HTML and terminal output. Rows for metrics no policy has are left out."""
    order = policy_order(metrics)
    stats = [metrics.get("policies", {}).get(name, {}) for name in order]
    differences = metrics.get("differences", {})
    header = ["metric", *(column_label(metrics, name) for name in order), "difference"]
    sources = reward_sources(metrics)
    rows = [
        [
            f"reward: {source}",
            *(fmt_estimate(p.get("rewards", {}).get(source)) for p in stats),
            fmt_estimate(differences.get(source)),
        ]
        for source in sources
    ]
    if any(p.get("win_rate") for p in stats):
        baseline = display(metrics["baseline"])
        rows += [
            [
                f"win rate vs {baseline}: {source}",
                *(fmt_estimate((p.get("win_rate") or {}).get(source)) for p in stats),
                MISSING,
            ]
            for source in sources
        ]
    # The evaluation computes paired differences for rewards only; the rest is shown per policy.
    for key, label in (
        ("kl_to_reference", "KL to reference"),
        ("response_length", "response length"),
        ("perplexity_under_reference", "perplexity under reference"),
    ):
        if key in ("kl_to_reference", "response_length") or any(key in p for p in stats):
            rows.append([label, *(fmt_estimate(p.get(key)) for p in stats), MISSING])
    for key in [*_distinct_keys(metrics), "unique_completions"]:
        if any(key in p for p in stats):
            label = key.replace("_", "-") if key.startswith("distinct") else "unique completions"
            rows.append([label, *(fmt(p.get(key)) for p in stats), MISSING])
    return header, rows


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_escape_cell(cell) for cell in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(_escape_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def format_table(metrics: dict) -> str:
    """The results table as aligned plain text, for the terminal."""
    header, rows = table_rows(metrics)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:
        # Metric names read left to right; numbers right-aligned so their brackets line up.
        numbers = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([cells[0].ljust(widths[0]), *numbers]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    title = f"mean [{ci_label(metrics)}]"
    return "\n".join([title, line(header), rule, *(line(row) for row in rows)])


def format_warnings(metrics: dict) -> str:
    """The warnings as plain lines for the terminal; empty when there are none."""
    return "\n".join(
        f"warning ({w['kind']}, from step {w['step']}): {w['message']}" for w in metrics.get("warnings", [])
    )


# ---------------------------------------------------------------- the verdict


def _interval(metrics: dict, estimate: Estimate) -> str:
    return f"{ci_label(metrics)} {fmt(estimate.ci_low)} to {fmt(estimate.ci_high)}"


def _difference_sentence(metrics: dict, source: str, difference: Estimate) -> str:
    baseline, candidate = display(metrics["baseline"]), display(metrics["candidate"])
    direction = "higher" if difference.mean >= 0 else "lower"
    if difference.ci_low > 0:
        conclusion = "a real improvement."
    elif difference.ci_high < 0:
        conclusion = "a real decline."
    else:
        conclusion = "not distinguishable from zero, so this evaluation shows no reliable change."
    return (
        f"The {candidate} policy's mean {source} score is {fmt(abs(difference.mean))} {direction} "
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
        f"the {source} score rose by {fmt(estimate.mean)} ({_interval(metrics, estimate)})"
        for source, estimate in differences.items()
        if source in risen
    )
    return (
        f"Yet {evidence} while the gold score did not: "
        "the policy may be fooling the reward model rather than getting better."
    )


def verdict(metrics: dict) -> str:
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
    peaked = [w for w in metrics.get("warnings", []) if w["kind"] == "overoptimization"]
    if peaked:
        sentences.append(
            f"But during training the gold score peaked at step {peaked[0]['step']} and then fell while the "
            "proxy kept rising: over-optimisation (see Warnings and Checkpoints)."
        )
    return " ".join(sentences)


def warnings_intro(metrics: dict) -> str:
    steps = metrics.get("training", {}).get("steps")
    checked = f" over {int(steps)} RL steps" if isinstance(steps, (int, float)) else ""
    if not metrics.get("warnings"):
        return (
            f"No training-health or over-optimisation warnings{checked} (KL, entropy, response collapse, "
            "empty responses, flat rewards, value loss, sampler-trainer mismatch; proxy vs gold across "
            "snapshots)."
        )
    return f"{len(metrics['warnings'])} warning(s){checked}, each from the step at which it began:"


def best_checkpoint_sentence(metrics: dict) -> str | None:
    best = metrics.get("best_checkpoint")
    if not best:
        return None
    judge = best.get("judged_by", GOLD)
    score = (best.get("rewards") or {}).get(judge)
    where = (
        f"its weights are in `{best['stage']}/{best['path']}` of the run directory"
        if best.get("path") and best.get("stage")
        else (f"its weights are in `{best['path']}`" if best.get("path") else "no weights were saved for it")
    )
    evaluated = ""
    if best.get("evaluated_as"):
        evaluated = (
            f" It is evaluated above as {display(best['evaluated_as'])}, on the same prompts as the others"
        )
        change = (best.get("difference_vs_candidate") or {}).get(judge)
        if change:
            direction = "higher" if change["mean"] >= 0 else "lower"
            evaluated += (
                f": its mean {judge} score is {fmt(abs(change['mean']))} {direction} than the final "
                f"{display(metrics['candidate'])} policy's ({_interval(metrics, _as_estimate(change))})"
            )
        evaluated += "."
    return (
        f"Best checkpoint by {judge}: step {best['step']} ({judge} {fmt(score)}, "
        f"KL {fmt(best.get('kl'))}); {where}.{evaluated}"
    )


# ---------------------------------------------------------------- settings, snapshots and samples


def setting_text(value: object) -> str:
    """A settings value as text; a mapping (e.g. reward sources) as `name: value` pairs."""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {setting_text(item)}" for key, item in value.items()) or MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _key_values(block: dict) -> list[str]:
    return [f"- {key}: {setting_text(value)}" for key, value in block.items()]


def snapshot_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the snapshot table: step, episodes, KL, each reward, where the weights are."""
    snapshots = metrics.get("snapshots") or []
    sources: list[str] = []
    for snapshot in snapshots:
        sources += [key for key in (snapshot.get("rewards") or {}) if key not in sources]
    best = metrics.get("best_checkpoint") or {}
    rows = [
        [
            str(s.get("step")),
            str(s.get("episodes", MISSING)),
            fmt(s.get("kl")),
            *(fmt((s.get("rewards") or {}).get(source)) for source in sources),
            (s.get("path") or MISSING) + (" ← best" if s.get("step") == best.get("step") else ""),
        ]
        for s in sorted(snapshots, key=lambda s: s.get("step", 0))
    ]
    return ["step", "episodes", "KL", *sources, "weights"], rows


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


def first_samples(samples: list[dict], n_examples: int) -> list[tuple[str, dict[str, dict]]]:
    """The first `n_examples` prompts in sample order, each with its lowest-index sample per policy."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in samples:
        chosen = by_prompt.setdefault(row["prompt"], {})
        current = chosen.get(row["policy"])
        if current is None or row.get("sample_index", 0) < current.get("sample_index", 0):
            chosen[row["policy"]] = row
    return list(by_prompt.items())[:n_examples]


def sample_policies(metrics: dict, samples: list[dict]) -> list[str]:
    """The policies to show side by side: baseline, candidate, others, then any only the samples name."""
    order = policy_order(metrics)
    return order + [p for p in dict.fromkeys(row["policy"] for row in samples) if p not in order]


def _completion_cell(row: dict) -> str:
    # A policy with no sample for this prompt shows a dash, not an "(empty)" completion.
    return _code_span(row.get("completion", ""), in_table=True) if row else MISSING


def _example_block(number: int, prompt: str, rows: dict[str, dict], metrics: dict, shown: list[str]) -> str:
    columns = [rows.get(policy, {}) for policy in shown]
    sources: list[str] = []
    for row in columns:
        sources += [source for source in row.get("rewards", {}) if source not in sources]
    lines = [
        f"**Prompt {number}.** {_code_span(prompt, in_table=False)}",
        "",
        "| | " + " | ".join(column_label(metrics, policy) for policy in shown) + " |",
        "|---|" + "---|" * len(shown),
        "| completion | " + " | ".join(_completion_cell(row) for row in columns) + " |",
    ]
    for source in sources:
        values = " | ".join(fmt(row.get("rewards", {}).get(source)) for row in columns)
        lines.append(f"| {_escape_cell(source)} | {values} |")
    return "\n".join(lines)


def _examples_section(samples: list[dict], metrics: dict, n_examples: int) -> str:
    chosen = first_samples(samples, n_examples)
    if not chosen:
        return "No samples were recorded."
    named = {row["policy"] for row in samples}
    shown = [policy for policy in sample_policies(metrics, samples) if policy in named]
    intro = f"The first sample of each policy on the first {len(chosen)} evaluation prompts."
    blocks = [
        _example_block(number, prompt, rows, metrics, shown)
        for number, (prompt, rows) in enumerate(chosen, start=1)
    ]
    return "\n\n".join([intro, *blocks])


# ---------------------------------------------------------------- the markdown report


def render_markdown(
    metrics: dict,
    samples: list[dict],
    plot_file: str | None,
    n_examples: int = 6,
    plots: dict[str, str] | None = None,
) -> str:
    """The whole report as markdown. `plot_file` is the training-curve image path relative to the
    report; `plots` maps the titles of further images to their paths."""
    baseline, candidate = metrics["baseline"], metrics["candidate"]
    header, rows = table_rows(metrics)
    sections = [f"# Evaluation: {display(candidate)} vs {display(baseline)}", verdict(metrics)]
    if "warnings" in metrics:
        lines = [f"- **{w['kind']}** from step {w['step']}: {w['message']}" for w in metrics["warnings"]]
        sections += ["## Warnings", "\n".join([warnings_intro(metrics), *lines])]
    sections += [
        "## Results",
        f"Mean [{ci_label(metrics)}] of each metric over the evaluation samples, resampled by prompt. The "
        f"difference is {display(candidate)} minus {display(baseline)} on the same prompts (paired "
        f"bootstrap). A win rate is how often a policy's sample scores above {display(baseline)}'s on the "
        "same prompt (ties count half); distinct-n is unique n-grams / n-grams over all of a policy's "
        "samples; perplexity is exp(mean NLL per token) of the samples under the reference.",
        _markdown_table(header, rows),
    ]
    if metrics.get("snapshots"):
        snap_header, snap_rows = snapshot_rows(metrics)
        sections += [
            "## Checkpoints",
            "Snapshots the RL stage saved and scored while training (rewards are its own means).",
            _markdown_table(snap_header, snap_rows),
        ]
        best = best_checkpoint_sentence(metrics)
        sections += [best] if best else []
    sections += [
        "## Settings",
        "\n".join(_key_values(metrics.get("settings", {}))) or "No settings recorded.",
    ]
    if metrics.get("training"):
        sections += ["## Training", "\n".join(_key_values(metrics["training"]))]
    images = ({"training curves": plot_file} if plot_file else {}) | (plots or {})
    if images:
        sections += [
            "## Training curves",
            "\n\n".join(f"![{title}]({path})" for title, path in images.items()),
        ]
    sections += ["## Sample completions", _examples_section(samples, metrics, n_examples)]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------- plots


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


def _mark_warnings(axes, warnings: list[dict]) -> None:
    for warning in warnings:
        axes.axvline(warning["step"], color="tab:red", linestyle=":", linewidth=1)


def training_curves_figure(
    history: list[dict], snapshots: list[dict] | None = None, warnings: list[dict] | None = None
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
    snapshot_sources = sorted({k for s in snapshots or [] for k in (s.get("rewards") or {})})
    for source in snapshot_sources:
        points = sorted(
            (s["step"], s["rewards"][source])
            for s in snapshots or []
            if isinstance((s.get("rewards") or {}).get(source), (int, float))
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
    snapshots: list[dict] | None = None,
    warnings: list[dict] | None = None,
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


def training_health_figure(history: list[dict], warnings: list[dict] | None = None) -> Figure | None:
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
        _mark_warnings(axes, [w for w in warnings or [] if w["kind"] != "overoptimization"])
        axes.set_xlabel("step")
        axes.set_title(label)
        axes.grid(alpha=0.3)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    return figure


def frontier_figure(metrics: dict) -> Figure | None:
    """Reward against KL: each snapshot's scores (one line per source, in step order) and each evaluated
    policy's mean with its CIs. Gold falling while the proxy rises along KL is over-optimisation."""
    snapshots = sorted(metrics.get("snapshots") or [], key=lambda s: s.get("step", 0))
    if not snapshots:
        return None
    figure = _figure(7, 5.2)
    axes = figure.subplots()
    sources = sorted({k for s in snapshots for k in (s.get("rewards") or {})})
    colors = {source: f"C{index}" for index, source in enumerate(sources)}
    best = metrics.get("best_checkpoint")
    judge = (best or {}).get("judged_by", GOLD if GOLD in sources else None)
    for source in sources:
        points = [
            (s["step"], s["kl"], s["rewards"][source])
            for s in snapshots
            if isinstance(s.get("kl"), (int, float)) and isinstance(s["rewards"].get(source), (int, float))
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
    if best and isinstance(best.get("kl"), (int, float)):
        axes.plot(
            best["kl"],
            best["rewards"][judge],
            marker="*",
            markersize=16,
            color="gold",
            mec="black",
            linestyle="none",
            label=f"best by {judge} (step {best['step']})",
        )
    for name, policy in metrics.get("policies", {}).items():
        kl = policy.get("kl_to_reference")
        for source, reward in policy.get("rewards", {}).items():
            if not kl or source not in colors:
                continue
            axes.errorbar(
                kl["mean"],
                reward["mean"],
                xerr=[[kl["mean"] - kl["ci_low"]], [kl["ci_high"] - kl["mean"]]],
                yerr=[[reward["mean"] - reward["ci_low"]], [reward["ci_high"] - reward["mean"]]],
                marker="x",
                color=colors[source],
                capsize=3,
            )
            if source == (judge or source):  # one label per policy
                axes.annotate(
                    display(name),
                    (kl["mean"], reward["mean"]),
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


# ---------------------------------------------------------------- writing
