"""The report, built once: `build_report` turns an `EvaluationResult` (and its samples and plots) into a
typed `Report` of sentences, tables and examples, which `markdown.render_markdown` and `html.render_html`
both render, so the two files cannot say different things. The terminal's table comes from here too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.evaluation.formatting import (
    MISSING,
    ci_label,
    display,
    fmt,
    fmt_estimate,
    setting_text,
)
from pipeline.evaluation.result import EvaluationResult
from pipeline.evaluation.verdict import best_checkpoint_sentence, verdict, warnings_intro
from stages.rl.health import HealthWarning

BEST_MARK = " ← best"


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]  # the first cell names the row; the rest are numbers as text
    highlighted: frozenset[int] = frozenset()  # row indices to set apart (the best checkpoint)


@dataclass(frozen=True)
class SampleCell:
    policy: str  # the column label, e.g. "PPO (after)"
    completion: str | None  # None: this policy has no sample for the prompt
    rewards: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    """One evaluation prompt with the first sample of each policy, side by side."""

    prompt: str
    cells: list[SampleCell]
    sources: list[str]  # every reward source any of the cells was scored by, in order


@dataclass(frozen=True)
class Plot:
    title: str
    file: str  # the PNG's name beside the report
    png: bytes


@dataclass(frozen=True)
class Report:
    title: str
    verdict: str
    warnings: list[HealthWarning] | None  # None: no training run was checked (no Warnings section)
    warnings_intro: str
    results_intro: str
    results: Table
    checkpoints: Table | None  # None when the RL stage saved no snapshots
    best_checkpoint: str | None  # a sentence; file paths in `backticks`
    settings: dict[str, str]
    training: dict[str, str]
    plots: list[Plot]
    examples: list[Example]


CHECKPOINTS_INTRO = "Snapshots the RL stage saved and scored while training (rewards are its own means)."


# ---------------------------------------------------------------- the results table


def in_order(groups: Iterable[Iterable[str]]) -> list[str]:
    """Every name of the groups once, in the order they first appear."""
    return list(dict.fromkeys(name for group in groups for name in group))


def reward_sources(result: EvaluationResult) -> list[str]:
    """Every reward source named anywhere, differences first, in the order the result lists them."""
    return in_order([result.differences, *(policy.rewards for policy in result.policies.values())])


def policy_order(result: EvaluationResult) -> list[str]:
    """Baseline, candidate, then any other evaluated policies in the order they were evaluated."""
    others = [name for name in result.policies if name not in (result.baseline, result.candidate)]
    return [result.baseline, result.candidate, *others]


def column_label(result: EvaluationResult, policy: str) -> str:
    suffix = {result.baseline: " (before)", result.candidate: " (after)"}.get(policy, "")
    return display(policy) + suffix


def results_table(result: EvaluationResult) -> Table:
    """One column per policy, then candidate minus baseline; rows for metrics no policy has are left out."""
    order = policy_order(result)
    stats = [result.policies.get(name) for name in order]
    header = ["metric", *(column_label(result, name) for name in order), "difference"]
    sources = reward_sources(result)
    rows = [
        [
            f"reward: {source}",
            *(fmt_estimate(p.rewards.get(source) if p else None) for p in stats),
            fmt_estimate(result.differences.get(source)),
        ]
        for source in sources
    ]
    if any(p and p.win_rate for p in stats):
        baseline = display(result.baseline)
        rows += [
            [
                f"win rate vs {baseline}: {source}",
                *(fmt_estimate((p.win_rate or {}).get(source) if p else None) for p in stats),
                MISSING,
            ]
            for source in sources
        ]
    # The evaluation computes paired differences for rewards only; the rest is shown per policy.
    rows.append(["KL to reference", *(fmt_estimate(p and p.kl_to_reference) for p in stats), MISSING])
    rows.append(["response length", *(fmt_estimate(p and p.response_length) for p in stats), MISSING])
    if any(p and p.perplexity_under_reference for p in stats):
        perplexities = (fmt_estimate(p and p.perplexity_under_reference) for p in stats)
        rows.append(["perplexity under reference", *perplexities, MISSING])
    for n in sorted({n for p in stats if p for n in p.distinct}):
        rows.append([f"distinct-{n}", *(fmt(p.distinct.get(n) if p else None) for p in stats), MISSING])
    if any(p and p.unique_completions is not None for p in stats):
        rows.append(["unique completions", *(fmt(p and p.unique_completions) for p in stats), MISSING])
    return Table(header, rows)


def results_intro(result: EvaluationResult) -> str:
    baseline, candidate = display(result.baseline), display(result.candidate)
    return (
        f"Mean [{ci_label(result.confidence)}] of each metric over the evaluation samples, resampled by "
        f"prompt. The difference is {candidate} minus {baseline} on the same prompts (paired bootstrap). A "
        f"win rate is how often a policy's sample scores above {baseline}'s on the same prompt (ties count "
        "half); distinct-n is unique n-grams / n-grams over all of a policy's samples; perplexity is "
        "exp(mean NLL per token) of the samples under the reference."
    )


def format_table(result: EvaluationResult) -> str:
    """The results table as aligned plain text, for the terminal."""
    table = results_table(result)
    lines = [table.header, *table.rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(table.header))]

    def line(cells: list[str]) -> str:
        # Metric names read left to right; numbers right-aligned so their brackets line up.
        numbers = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
        return "  ".join([cells[0].ljust(widths[0]), *numbers]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    title = f"mean [{ci_label(result.confidence)}]"
    return "\n".join([title, line(table.header), rule, *(line(row) for row in table.rows)])


def format_warnings(result: EvaluationResult) -> str:
    """The warnings as plain lines for the terminal; empty when there are none."""
    return "\n".join(f"warning ({w.kind}, from step {w.step}): {w.message}" for w in result.warnings or [])


# ---------------------------------------------------------------- checkpoints and samples


def checkpoints_table(result: EvaluationResult) -> Table | None:
    """Step, episodes, KL, each reward and where the weights are, per snapshot; the best one marked."""
    if not result.snapshots:
        return None
    sources = in_order(snapshot.rewards for snapshot in result.snapshots)
    best_step = result.best_checkpoint.snapshot.step if result.best_checkpoint else None
    ordered = sorted(result.snapshots, key=lambda s: s.step)
    rows = [
        [
            str(s.step),
            str(s.episodes if s.episodes is not None else MISSING),
            fmt(s.kl),
            *(fmt(s.rewards.get(source)) for source in sources),
            (s.path or MISSING) + (BEST_MARK if s.step == best_step else ""),
        ]
        for s in ordered
    ]
    best = frozenset(index for index, s in enumerate(ordered) if s.step == best_step)
    return Table(["step", "episodes", "KL", *sources, "weights"], rows, best)


def first_samples(samples: list[dict], n_examples: int) -> list[tuple[str, dict[str, dict]]]:
    """The first `n_examples` prompts in sample order, each with its lowest-index sample per policy."""
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in samples:
        chosen = by_prompt.setdefault(row["prompt"], {})
        current = chosen.get(row["policy"])
        if current is None or row.get("sample_index", 0) < current.get("sample_index", 0):
            chosen[row["policy"]] = row
    return list(by_prompt.items())[:n_examples]


def examples(result: EvaluationResult, samples: list[dict], n_examples: int) -> list[Example]:
    """Baseline, candidate, the other policies, then any only the samples name; one column each."""
    order = policy_order(result)
    named = list(dict.fromkeys(row["policy"] for row in samples))
    shown = [policy for policy in order + [p for p in named if p not in order] if policy in named]
    chosen = []
    for prompt, rows in first_samples(samples, n_examples):
        cells = [
            SampleCell(
                column_label(result, policy),
                rows[policy].get("completion", "") if policy in rows else None,
                dict(rows[policy].get("rewards", {})) if policy in rows else {},
            )
            for policy in shown
        ]
        chosen.append(Example(prompt, cells, in_order(cell.rewards for cell in cells)))
    return chosen


# ---------------------------------------------------------------- the report


def build_report(
    result: EvaluationResult, samples: list[dict], plots: list[Plot] | None = None, n_examples: int = 6
) -> Report:
    return Report(
        title=f"Evaluation: {display(result.candidate)} vs {display(result.baseline)}",
        verdict=verdict(result),
        warnings=result.warnings,
        warnings_intro=warnings_intro(result),
        results_intro=results_intro(result),
        results=results_table(result),
        checkpoints=checkpoints_table(result),
        best_checkpoint=best_checkpoint_sentence(result),
        settings={str(key): setting_text(value) for key, value in result.settings.items()},
        training={str(key): setting_text(value) for key, value in result.training.items()},
        plots=list(plots or []),
        examples=examples(result, samples, n_examples),
    )
