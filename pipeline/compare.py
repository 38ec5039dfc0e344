"""`rlhf compare`: several RL algorithms (and DPO) trained from the same SFT checkpoint in one run directory,
each evaluated against the same baseline on the same prompts, in one table."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.config import ResolvedConfig, load_config
from pipeline.errors import ConfigError

RL_KINDS = ("rl", "ppo")


def choices() -> list[str]:
    """Every registered RL algorithm, and DPO."""
    from stages.rl.algorithms import known_algorithms

    return [*known_algorithms(), "dpo"]


def comparison_config(config: ResolvedConfig, algorithms: list[str]) -> ResolvedConfig:
    """The config with one stage per algorithm (named after it) in place of the RL stage.

    Each RL variant copies the config's RL stage block with `algorithm` set and `compare.<algorithm>`
    applied on top; DPO starts from the RL stage's policy on the reward stage's preference data.
    """
    unknown = [a for a in algorithms if a not in choices()]
    if unknown:
        raise ConfigError(f"Unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(choices())}.")
    raw = copy.deepcopy(config.raw)
    stages: dict[str, Any] = raw["stages"]
    rl_names = [n for n, cfg in config.stages.items() if cfg.kind in RL_KINDS]
    if len(rl_names) != 1:
        raise ConfigError(
            f"rlhf compare needs a config with exactly one RL stage (kind rl or ppo); found "
            f"{len(rl_names)}: {', '.join(rl_names) or 'none'}."
        )
    rl_name = rl_names[0]
    base = stages.pop(rl_name)
    overrides = raw.pop("compare", {}) or {}
    for algorithm in algorithms:
        if algorithm in stages:
            raise ConfigError(f"Stage name '{algorithm}' is taken by another stage; rename that stage.")
        if algorithm == "dpo":
            preference = next((b for b in stages.values() if b.get("kind", "") == "reward"), {})
            block = {
                "kind": "dpo",
                "init_from": base.get("policy", "sft"),
                "data": preference.get("data", ""),
            }
        else:
            block = {**copy.deepcopy(base), "kind": "rl", "algorithm": algorithm}
        stages[algorithm] = {**block, **overrides.get(algorithm, {})}
    return load_config(None, data=raw)


def compare(config: ResolvedConfig, algorithms: list[str], run_dir: Path) -> dict[str, Any]:
    from pipeline.evaluation import evaluate
    from pipeline.runner import Runner

    cfg = comparison_config(config, algorithms)
    if cfg.pipeline.evaluation is None:
        raise ConfigError("rlhf compare needs an 'evaluation' section (baseline, prompts, reward sources).")
    runner = Runner(cfg, run_dir)
    runner.run()
    rows = {}
    with runner.rundir.lock():
        for algorithm in algorithms:
            eval_cfg = dataclasses.replace(cfg.pipeline.evaluation, candidate=algorithm)
            out = runner.rundir.root / "compare" / algorithm
            history_file = runner.rundir.stage_path(algorithm) / "history.json"
            history = json.loads(history_file.read_text()) if history_file.exists() else []
            metrics = evaluate(
                eval_cfg, runner.resolve, out, cfg.pipeline.seed, history, {"stage": algorithm}
            )
            rows[algorithm] = summary_row(metrics, runner.rundir.stage_entry(algorithm))
        table = {"baseline": cfg.pipeline.evaluation.baseline, "rows": rows}
        atomic_write_json(runner.rundir.root / "compare" / "compare.json", table)
        atomic_write_text(runner.rundir.root / "compare" / "compare.md", format_table(table) + "\n")
    return table


def summary_row(metrics: dict, stage_entry: dict) -> dict[str, Any]:
    candidate = metrics["policies"][metrics["candidate"]]
    return {
        "differences": metrics["differences"],
        "kl_to_reference": candidate["kl_to_reference"],
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
