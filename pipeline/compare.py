"""`rlhf compare`: several RL algorithms (and DPO) trained from the same SFT checkpoint in one run directory,
each evaluated against the same baseline on the same prompts, in one table."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.config import ResolvedConfig, resolve_kind
from pipeline.errors import ConfigError
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.result import EvaluationResult
from pipeline.runner import Runner
from stages.rl.algorithms import known_algorithms


def choices() -> list[str]:
    """Every registered RL algorithm, and DPO."""
    return [*known_algorithms(), "dpo"]


def comparison_data(raw: dict[str, Any], algorithms: list[str]) -> dict[str, Any]:
    """The raw config (as read, overrides applied) with one stage per algorithm, named after it, in place of
    the RL stage; `load_config` then types and checks it once.

    Each RL variant copies the config's RL stage block with `algorithm` set and `compare.<algorithm>`
    applied on top; DPO starts from the RL stage's policy on the reward stage's preference data.
    """
    unknown = [a for a in algorithms if a not in choices()]
    if unknown:
        raise ConfigError(f"Unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(choices())}.")
    raw = copy.deepcopy(raw)
    stages: dict[str, Any] = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError("The config's 'stages' must be a mapping of stage name to block.")
    kinds = {name: resolve_kind(name, block or {}) for name, block in stages.items()}
    rl_names = [name for name, kind in kinds.items() if kind == "rl"]
    if len(rl_names) != 1:
        raise ConfigError(
            f"rlhf compare needs a config with exactly one RL stage (kind rl); found "
            f"{len(rl_names)}: {', '.join(rl_names) or 'none'}."
        )
    base = stages.pop(rl_names[0]) or {}
    overrides = raw.pop("compare", {}) or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict | None) for v in overrides.values()):
        raise ConfigError("The config's 'compare' must map an algorithm to a block of RL stage settings.")
    for algorithm in algorithms:
        if algorithm in stages:
            raise ConfigError(f"Stage name '{algorithm}' is taken by another stage; rename that stage.")
        if algorithm == "dpo":
            preference = next((stages[n] for n, kind in kinds.items() if kind == "reward"), None) or {}
            block = {
                "kind": "dpo",
                "init_from": base.get("policy", "sft"),
                "data": preference.get("data", ""),
            }
        else:
            block = {**copy.deepcopy(base), "kind": "rl", "algorithm": algorithm}
        stages[algorithm] = {**block, **(overrides.get(algorithm) or {})}
    raw["stages"] = stages
    return raw


def compare(cfg: ResolvedConfig, algorithms: list[str], run_dir: Path) -> dict[str, Any]:
    """Train every stage of the comparison config `cfg` (`comparison_data`), then evaluate each algorithm's
    stage against the same baseline; writes compare/compare.json and compare.md in the run directory."""
    if cfg.pipeline.evaluation is None:
        raise ConfigError("rlhf compare needs an 'evaluation' section (baseline, prompts, reward sources).")
    runner = Runner(cfg, run_dir)
    runner.run()
    rows = {}
    with runner.rundir.lock():
        for algorithm in algorithms:
            eval_cfg = dataclasses.replace(cfg.pipeline.evaluation, candidate=algorithm)
            out = runner.rundir.root / "compare" / algorithm
            result = evaluate(eval_cfg, runner.resolve, out, cfg.pipeline.seed)
            rows[algorithm] = summary_row(result, runner.rundir.stage_entry(algorithm))
        table = {"baseline": cfg.pipeline.evaluation.baseline, "rows": rows}
        atomic_write_json(runner.rundir.root / "compare" / "compare.json", table)
        atomic_write_text(runner.rundir.root / "compare" / "compare.md", format_table(table) + "\n")
    return table


def summary_row(result: EvaluationResult, stage_entry: dict) -> dict[str, Any]:
    kl = result.policies[result.candidate].kl_to_reference
    return {
        "differences": {source: estimate.to_dict() for source, estimate in result.differences.items()},
        "kl_to_reference": kl.to_dict() if kl else None,
        "wall_time_s": stage_entry.get("wall_time_s"),
        "peak_rss_mb": stage_entry.get("metrics", {}).get("peak_rss_mb"),
        "peak_rss_added_mb": stage_entry.get("metrics", {}).get("peak_rss_added_mb"),
        "episodes": stage_entry.get("metrics", {}).get("episodes"),
    }


def _ci(estimate: dict | None) -> str:
    if not estimate:
        return "—"
    return f"{estimate['mean']:+.3f} [{estimate['ci_low']:+.3f}, {estimate['ci_high']:+.3f}]"


def format_table(table: dict) -> str:
    sources = sorted(
        {s for row in table["rows"].values() for s in row["differences"]}, key=lambda s: s != "gold"
    )
    header = [
        "algorithm",
        *[f"{s} gain vs {table['baseline']} [95% CI]" for s in sources],
        "KL to ref",
        "wall s",
        "peak RSS MB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table["rows"].items():
        cells = [
            name,
            *[_ci(row["differences"].get(s)) for s in sources],
            f"{row['kl_to_reference']['mean']:.3f}",
            f"{row['wall_time_s'] or 0:.1f}",
            f"{row['peak_rss_mb'] or 0:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
