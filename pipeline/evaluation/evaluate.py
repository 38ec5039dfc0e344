"""Did RL help, or did it fool the reward model? Sample policies on held-out prompts, score them with every
reward source, and report means, win rates, KL, diversity and perplexity with bootstrap CIs, plus the
training-health and over-optimisation warnings of the candidate's RL run.

The caller hands over the config and a way to find each policy's folder; everything about the candidate's
training is read from its folder (`training_run`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.chat import display, reward_inputs
from pipeline.data import PROMPT_ONLY, load_rows
from pipeline.diversity import distinct_n, unique_fraction
from pipeline.evaluation.config import EvaluationConfig
from pipeline.evaluation.result import EvaluationResult, PolicyResult, Snapshot
from pipeline.evaluation.sampling import PolicySamples, Reference, sample_policy
from pipeline.evaluation.scoring import reward_sources, source_descriptions
from pipeline.evaluation.stats import (
    Estimate,
    bootstrap_mean,
    bootstrap_ratio,
    paired_bootstrap_difference,
    win_rate,
)
from pipeline.evaluation.training_run import TrainingRun, best_checkpoint_policy, check_run
from pipeline.evaluation.writer import write_report
from pipeline.log import log
from reward_models.functions import load_reward_function

METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.jsonl"


def check(cfg: EvaluationConfig) -> None:
    """Validate the evaluation's prompts and reward functions before anything trains."""
    load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")
    for spec in [cfg.gold, *cfg.reward_functions.values()]:
        if spec:
            load_reward_function(spec)


def evaluate(
    cfg: EvaluationConfig, resolve: Callable[[str], str], out_dir: Path, seed: int
) -> EvaluationResult:
    """Write metrics.json, samples.jsonl, report.md and report.html into out_dir; returns the result.

    `resolve` turns a policy or reward-model source of the config (a stage name, folder or hub id) into
    what loads it; the candidate's training record is read from its folder.
    """
    seed = cfg.seed if cfg.seed is not None else seed
    prompts = [r["prompt"] for r in load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")]
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts  # strings or message lists
    policies = {cfg.baseline: cfg.baseline, cfg.candidate: cfg.candidate, **cfg.policies}
    locations = {name: resolve(source) for name, source in policies.items()}
    run = TrainingRun.read(cfg.candidate, locations[cfg.candidate])
    checks = check_run(run, cfg.health)
    best = best_checkpoint_policy(checks.best, run, cfg)
    if best is not None:
        best_name, policies[best_name], locations[best_name] = best
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = Reference(resolve(cfg.reference or cfg.baseline), device)
    sources = reward_sources(cfg, resolve)
    log(
        f"[eval] {len(prompts)} prompts x {cfg.samples_per_prompt} samples, policies "
        f"{', '.join(policies)}, rewards: {', '.join(sources) or 'none'}"
    )
    originals = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    repeated = [display(p) for p in originals]  # one string per prompt: the resampling groups
    statistics = dict(confidence=cfg.confidence, n_resamples=cfg.bootstrap_resamples, seed=seed)

    def estimate(values: list[float]) -> Estimate:
        """Mean with a CI that resamples prompts (samples of one prompt are not independent)."""
        result = bootstrap_mean(values, groups=repeated, **statistics)
        return dataclasses.replace(result, samples=len(values))

    samples: list[dict] = []
    per_policy: dict[str, PolicyResult] = {}
    rewards: dict[str, dict[str, list[float]]] = {}
    for name, source in tqdm(policies.items(), desc="eval policies", disable=len(policies) < 3):
        drawn = sample_policy(locations[name], reference, prompts, cfg, seed, f"eval {name}")
        scored = reward_inputs(originals, drawn.completions)
        rewards[name] = {key: fn(*scored).tolist() for key, fn in sources.items()}
        wins = None
        if name != cfg.baseline:
            wins = {
                key: win_rate(values, rewards[cfg.baseline][key], groups=repeated, **statistics)
                for key, values in rewards[name].items()
            }
        per_policy[name] = PolicyResult(
            source=source,
            rewards={key: estimate(values) for key, values in rewards[name].items()},
            kl_to_reference=estimate(drawn.kl) if drawn.kl is not None else None,
            response_length=estimate([float(n) for n in drawn.lengths]),
            distinct={n: distinct_n(drawn.completions, n) for n in range(1, cfg.distinct_n + 1)},
            unique_completions=unique_fraction(drawn.completions),
            perplexity_under_reference=perplexity(drawn, repeated, statistics),
            win_rate=wins,
        )
        samples += sample_rows(name, repeated, drawn, rewards[name], cfg.samples_per_prompt)

    def difference(after: str, before: str) -> dict[str, Estimate]:
        """Per reward source: mean(after) - mean(before), paired by prompt (cluster bootstrap)."""
        return {
            key: paired_bootstrap_difference(
                rewards[after][key], rewards[before][key], groups=repeated, **statistics
            )
            for key in sources
        }

    best_checkpoint = checks.best
    if best is not None:  # is stopping at the best snapshot better than training to the end?
        best_checkpoint = dataclasses.replace(
            best_checkpoint,
            evaluated_as=best_name,
            difference_vs_candidate=difference(best_name, cfg.candidate),
        )
    result = EvaluationResult(
        baseline=cfg.baseline,
        candidate=cfg.candidate,
        policies=per_policy,
        differences=difference(cfg.candidate, cfg.baseline),
        settings={
            "n_prompts": len(prompts),
            "samples_per_prompt": cfg.samples_per_prompt,
            "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens,
            "seed": seed,
            "confidence": cfg.confidence,
            "reference": cfg.reference or cfg.baseline,
            "reward_sources": source_descriptions(cfg),
        },
        training=run.summary,
        warnings=checks.warnings,
        snapshots=[Snapshot.from_dict(s) for s in run.snapshots],
        best_checkpoint=best_checkpoint,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / METRICS_FILE, result.to_dict())
    atomic_write_text(out_dir / SAMPLES_FILE, "".join(json.dumps(s) + "\n" for s in samples))
    write_report(out_dir, result, samples, run.history, n_examples=cfg.n_examples)
    return result


def sample_rows(
    policy: str, prompts: list[str], drawn: PolicySamples, rewards: dict[str, list[float]], per_prompt: int
) -> list[dict]:
    """One `samples.jsonl` row per sample: the text, its scores, KL, length and NLL under the reference."""
    return [
        {
            "policy": policy,
            "prompt": prompt,
            "completion": completion,
            "sample_index": i % per_prompt,
            "rewards": {key: values[i] for key, values in rewards.items()},
            "kl": drawn.kl[i] if drawn.kl is not None else None,
            "length": drawn.lengths[i],
            "reference_nll": drawn.reference_nll[i] if drawn.reference_nll is not None else None,
        }
        for i, (prompt, completion) in enumerate(zip(prompts, drawn.completions))
    ]


def perplexity(drawn: PolicySamples, prompts: list[str], statistics: dict) -> Estimate | None:
    """exp(NLL per token) of the samples under the reference, all tokens pooled; CI from resampled prompts.

    The NLL per token is estimated with its bootstrap interval, then exponentiated (exp is monotone,
    so the percentile interval maps over). None when the vocabularies differ. `statistics`: the
    bootstrap's confidence, n_resamples and seed.
    """
    if drawn.reference_nll is None:
        return None
    nll = bootstrap_ratio(
        drawn.reference_nll, [float(n) for n in drawn.lengths], groups=prompts, **statistics
    )
    return Estimate(
        mean=math.exp(nll.mean),
        ci_low=math.exp(nll.ci_low),
        ci_high=math.exp(nll.ci_high),
        n=nll.n,
        samples=len(drawn.lengths),
    )
