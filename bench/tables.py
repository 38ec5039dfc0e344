"""The tables of bench/compare_peers.py: per-run summaries over repetitions, ratios against the targets."""

from __future__ import annotations

import statistics

from bench.common import fmt, table


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(records: list[dict]) -> dict:
    """Per (side, run): medians over reps of speed, wall and memory; mean and range of the gold gain."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(f"{r['side']}:{r['run']}", []).append(r)
    out = {}
    for key, rows in groups.items():
        gains = [r.get("gold_gain") for r in rows if r.get("gold_gain") is not None]
        out[key] = {
            "reps": len(rows),
            "peer": rows[0].get("peer"),
            "episodes_per_s": median([r.get("episodes_per_s") for r in rows]),
            "tokens_per_s": median([r.get("tokens_per_s") for r in rows]),
            "train_runtime_s": median([r.get("train_runtime_s") for r in rows]),
            "tokens": rows[0].get("tokens"),
            "wall_s": median([r.get("wall_s") for r in rows]),
            "peak_rss_mb": median([r.get("peak_rss_mb") for r in rows]),
            "gold_before": rows[0].get("gold_before"),
            "gold_gain": mean(gains),
            "gold_gain_range": [min(gains), max(gains)] if gains else None,
            "reward_first": mean([r.get("reward_first") for r in rows]),
            "reward_last": mean([r.get("reward_last") for r in rows]),
            "train_loss": mean([r.get("train_loss") for r in rows]),
            "load": [
                min(r["load"][0] for r in rows if "load" in r),
                max(r["load"][1] for r in rows if "load" in r),
            ]
            if any("load" in r for r in rows)
            else None,
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def gain_text(s: dict) -> str:
    if s.get("gold_gain") is None:
        return "—"
    low, high = s["gold_gain_range"]
    return f"{s['gold_gain']:+.2f} [{low:+.2f}, {high:+.2f}]"


def gold_verdict(ours: dict, peer: dict) -> str:
    """Mean gain at least the peer's: met; below it but the seeds' ranges overlap: within the seed spread."""
    if ours["gold_gain"] >= peer["gold_gain"]:
        return "≥ peer: met"
    if ours["gold_gain_range"][1] >= peer["gold_gain_range"][0]:
        return "< peer, within the seeds' spread"
    return "< peer on every seed: NOT met"


RL_TARGETS = {  # row -> (our run, peer run, label, speed target, memory target)
    "ppo": ("ppo", "ppo", "PPO vs TRL 1.9.2 PPOTrainer", 2.0, 0.6),
    "ppo_lora": ("ppo_lora", "ppo", "PPO + LoRA (ours) vs TRL 1.9.2 PPO (full)", None, None),
    "ppo_shared": ("ppo_shared", "ppo", "PPO, shared value head (ours) vs TRL 1.9.2 PPO", 2.0, 0.6),
    "ppo_lora_shared": (
        "ppo_lora_shared",
        "ppo",
        "PPO + LoRA + shared value head (ours) vs TRL 1.9.2 PPO (full)",
        None,
        None,
    ),
    "ppo-mem-h512": ("ppo-mem-h512", "ppo-mem-h512", "PPO, 34M-param policy, 32 episodes", 2.0, 0.6),
    "ppo_lora_shared-mem-h512": (
        "ppo_lora_shared-mem-h512",
        "ppo-mem-h512",
        "PPO + LoRA + shared value head vs TRL PPO (full), 34M",
        None,
        None,
    ),
    "ppo_shared-mem-h512": (
        "ppo_shared-mem-h512",
        "ppo-mem-h512",
        "PPO, shared value head vs TRL PPO, 34M",
        2.0,
        0.6,
    ),
    "ppo_lora-mem-h512": (
        "ppo_lora-mem-h512",
        "ppo-mem-h512",
        "PPO + LoRA vs TRL PPO (full), 34M",
        None,
        None,
    ),
}
for _algorithm, _peer in (("grpo", "GRPOTrainer"), ("rloo", "RLOOTrainer")):
    for _it in (4, 1):
        _run = f"{_algorithm}{_it}"
        _label = f"{_algorithm.upper()} vs TRL {_peer} (num_iterations {_it})"
        RL_TARGETS[_run] = (_run, _run, _label, 1.5, None)
        RL_TARGETS[f"{_run}-same-reward"] = (
            f"{_run}-same-reward",
            _run,
            _label + ", the harness's reward",
            1.5,
            None,
        )


def render(summary: dict, info: dict, args) -> str:
    parts = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}, trl {info.get('trl')} (ours); CUDA available: "
        f"{info.get('cuda')}. threads={args.threads}, reps={args.reps}. "
        f"{info['load_at_start']} at the start, "
        f"{info['load_at_end']} at the end ({info['bench_minutes']} min). Engine: {info['engine_files']}.",
    ]
    rows = []
    for key, (ours_run, peer_run, label, speed_target, memory_target) in RL_TARGETS.items():
        o, p = summary.get(f"ours:{ours_run}"), summary.get(f"peer:{peer_run}")
        if not o or not p:
            continue
        speed = ratio(o["episodes_per_s"], p["episodes_per_s"])
        wall = ratio(p["wall_s"], o["wall_s"])
        memory = ratio(o["peak_rss_mb"], p["peak_rss_mb"])
        verdicts = []
        if speed_target:
            verdicts.append(f"speed {'met' if speed >= speed_target else 'NOT met'} (≥{speed_target}x)")
        if memory_target:
            verdicts.append(f"memory {'met' if memory <= memory_target else 'NOT met'} (≤{memory_target}x)")
        if o.get("gold_gain") is not None and p.get("gold_gain") is not None and "lora" not in key:
            verdicts.append(f"gold {gold_verdict(o, p)}")
        rows.append(
            [
                label,
                fmt(speed) + "x",
                fmt(wall) + "x",
                fmt(memory) + "x",
                gain_text(o),
                gain_text(p),
                "; ".join(verdicts) or "—",
            ]
        )
    if rows:
        parts.append(
            "RL, ratios ours : peer (episodes/s in the RL loop; wall = the whole command, peer ÷ ours, "
            "so > 1 "
            "means ours is faster; peak RSS ours ÷ peer; gold gain = mean over reps [min, max])\n\n"
            + table(
                [
                    "comparison",
                    "episodes/s",
                    "wall time",
                    "peak RSS",
                    "gold gain ours",
                    "gold gain peer",
                    "targets",
                ],
                rows,
                "lrrrrrl",
            )
        )
    rows = []
    for key, s in sorted(summary.items()):
        if s.get("episodes_per_s") is None:
            continue
        side, run_name = key.split(":")
        who = "ours (rlhf stage)" if side == "ours" else s.get("peer")
        rows.append(
            [
                run_name,
                who,
                fmt(s["episodes_per_s"], 1),
                fmt(s["wall_s"], 1),
                fmt(s["peak_rss_mb"], 0),
                fmt(s.get("gold_before")),
                gain_text(s),
                f"{fmt(s.get('reward_first'))} → {fmt(s.get('reward_last'))}",
                f"{fmt(s['load'][0], 1)}–{fmt(s['load'][1], 1)}" if s.get("load") else "—",
            ]
        )
    if rows:
        parts.append(
            "RL, absolute figures (medians over reps)\n\n"
            + table(
                [
                    "run",
                    "side",
                    "episodes/s",
                    "wall s",
                    "peak RSS MB",
                    "gold before",
                    "gold gain",
                    "RM reward first → last step",
                    "load avg",
                ],
                rows,
                "llrrrrrll",
            )
        )
    rows = []
    for kind, label in (("pretrain", "pretrain vs transformers Trainer"), ("sft", "SFT vs TRL SFTTrainer")):
        o, p = summary.get(f"ours:{kind}"), summary.get(f"peer:{kind}")
        if not o or not p:
            continue
        rows.append(
            [
                label,
                fmt(o["tokens_per_s"], 0),
                fmt(p["tokens_per_s"], 0),
                fmt(ratio(o["tokens_per_s"], p["tokens_per_s"])) + "x",
                fmt(o["tokens"] / o["wall_s"], 0),
                fmt(p["tokens"] / p["wall_s"], 0),
                fmt(ratio(p["wall_s"], o["wall_s"])) + "x",
                f"{fmt(o['wall_s'] - p['wall_s'], 1)} s",
                fmt(ratio(o["peak_rss_mb"], p["peak_rss_mb"])) + "x",
                f"{fmt(o['train_loss'], 3)} / {fmt(p['train_loss'], 3)}",
            ]
        )
    if rows:
        parts.append(
            "Pretraining and SFT: our stage wrapper vs the direct call (both run the same Trainer; "
            "'in train()' = tokens / the Trainer's train_runtime, 'whole command' = tokens / wall time of "
            "the "
            "process)\n\n"
            + table(
                [
                    "comparison",
                    "tokens/s in train() ours",
                    "direct",
                    "ratio",
                    "tokens/s whole command ours",
                    "direct",
                    "ratio",
                    "wrapper adds",
                    "peak RSS ratio",
                    "train loss ours / direct",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)
