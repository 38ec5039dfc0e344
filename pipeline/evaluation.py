"""Did RL help, or did it fool the reward model? Sample policies on held-out prompts, score them with every
reward source, and report means, win rates, KL, diversity and perplexity with bootstrap CIs, plus the
training-health and over-optimisation warnings of the RL run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.atomic import atomic_write_json, atomic_write_text
from pipeline.chat import display, render_prompt, reward_inputs, use_template
from pipeline.config import EvaluationConfig
from pipeline.data import PROMPT_ONLY, load_rows
from pipeline.diversity import distinct_n, unique_fraction
from pipeline.log import log
from pipeline.models import load_model, load_tokenizer
from pipeline.stats import bootstrap_mean, bootstrap_ratio, paired_bootstrap_difference, win_rate
from stages.rl.health import (
    best_snapshot,
    overoptimization_warning,
    snapshot_kl_warning,
    thresholds,
    training_warnings,
)

GOLD, PROXY = "gold", "reward_model"


@dataclass
class PolicySamples:
    completions: list[str]  # prompt-major: prompt i, sample j at i * samples_per_prompt + j
    lengths: list[int]  # response tokens, stop token included
    # Both None when the policy's vocabulary differs from the reference's (token log-probs do not compare):
    kl: list[float] | None  # sum over response tokens of log pi - log pi_ref at the sampling temperature
    reference_nll: list[float] | None  # -sum log pi_ref(y_t) at temperature 1: perplexity's numerator


class Reference:
    """The KL / perplexity reference, loaded once and shared by every policy."""

    def __init__(self, source: str, device: str):
        self.source, self.device = source, device
        self.tokenizer = load_tokenizer(source)
        self.model = load_model("AutoModelForCausalLM", source).to(device).eval()

    def compatible(self, tokenizer) -> bool:
        return tokenizer.get_vocab() == self.tokenizer.get_vocab()


def check(cfg: EvaluationConfig) -> None:
    """Validate the evaluation's prompts and reward functions before anything trains."""
    from reward_models.functions import load_reward_function

    load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")
    for spec in [cfg.gold, *cfg.reward_functions.values()]:
        if spec:
            load_reward_function(spec)


def sample_policy(
    source: str, reference: Reference, prompts: list, cfg: EvaluationConfig, seed: int, desc: str
) -> PolicySamples:
    """Sample `samples_per_prompt` completions per prompt with a fixed generator seed, through the configured
    rollout engine. A conversational prompt is rendered by this policy's own chat template, with its
    generation prompt."""
    from stages.rl.generation import GenerationRequest, make_engine
    from stages.rl.rollout import batched_response_logprobs, left_pad

    device = reference.device
    tokenizer = load_tokenizer(source)
    if cfg.chat_template or any(not isinstance(p, str) for p in prompts):
        use_template(tokenizer, cfg.chat_template, source, f"Evaluation prompts '{cfg.prompts}'")
    prompts = [p if isinstance(p, str) else render_prompt(tokenizer, p) for p in prompts]
    stop_ids = (
        tokenizer.convert_tokens_to_ids([cfg.stop_token]) if cfg.stop_token else [tokenizer.eos_token_id]
    )
    if source == reference.source:
        policy = reference.model
    else:
        policy = load_model("AutoModelForCausalLM", source).to(device).eval()
    comparable = reference.compatible(tokenizer)
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    encoded = tokenizer(repeated, add_special_tokens=False)["input_ids"]
    engine = make_engine(cfg.rollout.engine, max(map(len, encoded), default=None))
    out = PolicySamples([], [], [] if comparable else None, [] if comparable else None)
    for start in tqdm(range(0, len(repeated), cfg.batch_size), desc=desc, leave=False):
        batch = encoded[start : start + cfg.batch_size]
        query_ids, query_mask = left_pad(batch, tokenizer.pad_token_id, device)
        request = GenerationRequest(
            cfg.max_new_tokens,
            cfg.temperature,
            stop_ids,
            tokenizer.pad_token_id,
            generator=generator,
            seed=seed + start,
        )
        rollout = engine.generate(policy, query_ids, query_mask, request)
        mask = rollout.response_mask
        out.lengths += mask.sum(1).long().tolist()
        out.completions += tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        if not comparable:
            continue
        logprobs = batched_response_logprobs(policy, rollout, cfg.temperature, cfg.batch_size)
        ref_logprobs = batched_response_logprobs(reference.model, rollout, cfg.temperature, cfg.batch_size)
        out.kl += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
        # Perplexity is the reference's own judgement of the text, so at temperature 1.
        if cfg.temperature != 1.0:
            ref_logprobs = batched_response_logprobs(reference.model, rollout, 1.0, cfg.batch_size)
        out.reference_nll += (-(ref_logprobs * mask).sum(1)).tolist()
    return out


def reward_sources(cfg: EvaluationConfig, resolve: Callable[[str], str]) -> dict[str, Callable]:
    """Every reward source by display name: gold, reward_model, reward_models, reward_functions."""
    from reward_models import FunctionReward
    from reward_models.learned import LearnedRewardModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sources: dict[str, Callable] = {}
    if cfg.gold:
        sources[GOLD] = FunctionReward(cfg.gold)
    learned = {PROXY: cfg.reward_model} if cfg.reward_model else {}
    for name, source in {**learned, **cfg.reward_models}.items():
        sources[name] = LearnedRewardModel.load(resolve(source), name=name, device=device)
    for name, spec in cfg.reward_functions.items():
        sources[name] = FunctionReward(spec)
    return sources


def source_descriptions(cfg: EvaluationConfig) -> dict[str, str]:
    """What each reward source is, as written in the config (for the report's settings)."""
    described = {GOLD: cfg.gold} if cfg.gold else {}
    if cfg.reward_model:
        described[PROXY] = cfg.reward_model
    return {**described, **cfg.reward_models, **cfg.reward_functions}


def evaluate(
    cfg: EvaluationConfig,
    resolve: Callable[[str], str],
    out_dir: Path,
    seed: int,
    history: list[dict] | None = None,
    training: dict | None = None,
    snapshots: list[dict] | None = None,
) -> dict[str, Any]:
    """Write metrics.json, samples.jsonl, report.md and report.html into out_dir; returns the metrics.

    `history` and `snapshots` are the candidate RL stage's `history.json` and `snapshots.json`.
    """
    from pipeline.report_writer import write_report

    history, snapshots = history or [], snapshots or []
    seed = cfg.seed if cfg.seed is not None else seed
    prompts = [r["prompt"] for r in load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")]
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts  # strings or message lists
    policies = {cfg.baseline: cfg.baseline, cfg.candidate: cfg.candidate, **cfg.policies}
    locations = {name: resolve(source) for name, source in policies.items()}
    checks = run_warnings(history, snapshots, cfg, (training or {}).get("stage"))
    best = best_checkpoint_policy(checks["best_checkpoint"], snapshots, locations[cfg.candidate], cfg)
    if best is not None:
        best_name, policies[best_name], locations[best_name] = best
        checks["best_checkpoint"]["evaluated_as"] = best_name
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reference = Reference(resolve(cfg.reference or cfg.baseline), device)
    sources = reward_sources(cfg, resolve)
    log(
        f"[eval] {len(prompts)} prompts x {cfg.samples_per_prompt} samples, policies "
        f"{', '.join(policies)}, rewards: {', '.join(sources) or 'none'}"
    )
    originals = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    repeated = [display(p) for p in originals]  # one string per prompt: the resampling groups

    def estimate(values: list[float]) -> dict[str, float]:
        """Mean with a CI that resamples prompts (samples of one prompt are not independent)."""
        result = bootstrap_mean(
            values, confidence=cfg.confidence, n_resamples=cfg.bootstrap_resamples, seed=seed, groups=repeated
        )
        return {**result.to_dict(), "samples": len(values)}

    samples: list[dict] = []
    per_policy: dict[str, dict[str, Any]] = {}
    rewards: dict[str, dict[str, list[float]]] = {}
    for name, source in tqdm(policies.items(), desc="eval policies", disable=len(policies) < 3):
        drawn = sample_policy(locations[name], reference, prompts, cfg, seed, f"eval {name}")
        scored = reward_inputs(originals, drawn.completions)
        rewards[name] = {key: fn(*scored).tolist() for key, fn in sources.items()}
        per_policy[name] = {
            "source": source,
            "rewards": {key: estimate(values) for key, values in rewards[name].items()},
            "kl_to_reference": estimate(drawn.kl) if drawn.kl is not None else None,
            "response_length": estimate([float(n) for n in drawn.lengths]),
            **{f"distinct_{n}": distinct_n(drawn.completions, n) for n in range(1, cfg.distinct_n + 1)},
            "unique_completions": unique_fraction(drawn.completions),
            "perplexity_under_reference": perplexity(drawn, repeated, cfg, seed),
        }
        if name != cfg.baseline:
            per_policy[name]["win_rate"] = {
                key: win_rate(
                    values,
                    rewards[cfg.baseline][key],
                    groups=repeated,
                    confidence=cfg.confidence,
                    n_resamples=cfg.bootstrap_resamples,
                    seed=seed,
                ).to_dict()
                for key, values in rewards[name].items()
            }
        for i, (prompt, completion) in enumerate(zip(repeated, drawn.completions)):
            samples.append(
                {
                    "policy": name,
                    "prompt": prompt,
                    "completion": completion,
                    "sample_index": i % cfg.samples_per_prompt,
                    "rewards": {key: values[i] for key, values in rewards[name].items()},
                    "kl": drawn.kl[i] if drawn.kl is not None else None,
                    "length": drawn.lengths[i],
                    "reference_nll": drawn.reference_nll[i] if drawn.reference_nll is not None else None,
                }
            )

    def difference(after: str, before: str) -> dict[str, dict]:
        """Per reward source: mean(after) - mean(before), paired by prompt (cluster bootstrap)."""
        return {
            key: paired_bootstrap_difference(
                rewards[after][key],
                rewards[before][key],
                groups=repeated,
                confidence=cfg.confidence,
                n_resamples=cfg.bootstrap_resamples,
                seed=seed,
            ).to_dict()
            for key in sources
        }

    differences = difference(cfg.candidate, cfg.baseline)
    if best is not None:  # is stopping at the best snapshot better than training to the end?
        checks["best_checkpoint"]["difference_vs_candidate"] = difference(best_name, cfg.candidate)
    metrics = {
        "baseline": cfg.baseline,
        "candidate": cfg.candidate,
        "policies": per_policy,
        "differences": differences,
        "settings": {
            "n_prompts": len(prompts),
            "samples_per_prompt": cfg.samples_per_prompt,
            "temperature": cfg.temperature,
            "max_new_tokens": cfg.max_new_tokens,
            "seed": seed,
            "confidence": cfg.confidence,
            "reference": cfg.reference or cfg.baseline,
            "reward_sources": source_descriptions(cfg),
        },
        "training": training or {},
        **checks,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    write_report(out_dir, metrics, samples, history, snapshots, n_examples=cfg.n_examples)
    return metrics


def perplexity(drawn: PolicySamples, prompts: list[str], cfg: EvaluationConfig, seed: int) -> dict | None:
    """exp(NLL per token) of the samples under the reference, all tokens pooled; CI from resampled prompts.

    The NLL per token is estimated with its bootstrap interval, then exponentiated (exp is monotone,
    so the percentile interval maps over). None when the vocabularies differ.
    """
    if drawn.reference_nll is None:
        return None
    nll = bootstrap_ratio(
        drawn.reference_nll,
        [float(n) for n in drawn.lengths],
        groups=prompts,
        confidence=cfg.confidence,
        n_resamples=cfg.bootstrap_resamples,
        seed=seed,
    )
    return {
        "mean": math.exp(nll.mean),
        "ci_low": math.exp(nll.ci_low),
        "ci_high": math.exp(nll.ci_high),
        "n": nll.n,
        "samples": len(drawn.lengths),
    }


def run_warnings(
    history: list[dict], snapshots: list[dict], cfg: EvaluationConfig, stage: str | None
) -> dict[str, Any]:
    """`warnings` (training health, then over-optimisation), `snapshots` and `best_checkpoint`."""
    warnings = training_warnings(history, **cfg.health)
    jump = snapshot_kl_warning(snapshots, thresholds(**cfg.health).kl_max)
    warnings += [jump] if jump else []
    scored = {key for snapshot in snapshots for key in (snapshot.get("rewards") or {})}
    # Gold if the snapshots were scored by it, else a held-out scorer; the proxy is what RL optimised.
    gold = GOLD if GOLD in scored else next((k for k in sorted(scored) if k != PROXY), None)
    proxy = PROXY if PROXY in scored else next((k for k in sorted(scored) if k != gold), None)
    if gold and proxy:
        warning = overoptimization_warning(snapshots, proxy=proxy, gold=gold)
        warnings += [warning] if warning else []
    best = best_snapshot(snapshots, gold=gold) if gold else None
    return {
        "warnings": [w.to_dict() for w in warnings],
        "snapshots": snapshots,
        "best_checkpoint": {**best, "stage": stage, "judged_by": gold} if best else None,
    }


def best_checkpoint_policy(
    best: dict | None, snapshots: list[dict], candidate_folder: str, cfg: EvaluationConfig
) -> tuple[str, str, str] | None:
    """(name, source, folder) of the candidate's best snapshot, to evaluate it beside the others.

    None when it is off, there is no best snapshot, its weights were not kept, or it is the last
    snapshot (the candidate itself). The name is `<candidate>@<step>`, the source its path in the run.
    """
    if not cfg.evaluate_best_checkpoint or not best or not best.get("path"):
        return None
    if best["step"] == max(s["step"] for s in snapshots):
        return None
    folder = Path(candidate_folder) / best["path"]
    if not (folder / "config.json").is_file():
        return None
    return f"{cfg.candidate}@{best['step']}", f"{cfg.candidate}/{best['path']}", str(folder)
