"""Did RL improve reward? Sample policies on held-out prompts, score them, report with bootstrap CIs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pipeline.config import EvaluationConfig
from pipeline.data import PROMPT_ONLY, load_rows
from pipeline.log import log
from pipeline.models import load_model, load_tokenizer
from pipeline.rundir import atomic_write_json, atomic_write_text
from pipeline.stats import bootstrap_mean, paired_bootstrap_difference


@dataclass
class PolicySamples:
    completions: list[str]  # prompt-major: prompt i, sample j at i * samples_per_prompt + j
    kl: list[float]  # sequence KL to the reference, sum over tokens of log pi - log pi_ref (k1, unbiased)
    lengths: list[int]


def check(cfg: EvaluationConfig) -> None:
    """Validate the evaluation's prompts and gold function before anything trains."""
    from reward_models.functions import load_reward_function

    load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")
    if cfg.gold:
        load_reward_function(cfg.gold)


def sample_policy(
    source: str, reference_source: str, prompts: list[str], cfg: EvaluationConfig, seed: int, desc: str
) -> PolicySamples:
    """Sample `samples_per_prompt` completions per prompt with a fixed generator seed."""
    from stages.rl.rollout import batched_response_logprobs, sample
    from stages.rl.stage import left_pad

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(source)
    stop_ids = (
        tokenizer.convert_tokens_to_ids([cfg.stop_token]) if cfg.stop_token else [tokenizer.eos_token_id]
    )
    policy = load_model("AutoModelForCausalLM", source).to(device).eval()
    reference = policy
    if reference_source != source:
        reference = load_model("AutoModelForCausalLM", reference_source).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    encoded = tokenizer(repeated, add_special_tokens=False)["input_ids"]
    out = PolicySamples([], [], [])
    for start in tqdm(range(0, len(repeated), cfg.batch_size), desc=desc, leave=False):
        batch = encoded[start : start + cfg.batch_size]
        query_ids, query_mask = left_pad(batch, tokenizer.pad_token_id, device)
        rollout = sample(
            policy,
            query_ids,
            query_mask,
            cfg.max_new_tokens,
            cfg.temperature,
            stop_ids,
            tokenizer.pad_token_id,
            generator,
        )
        logprobs = batched_response_logprobs(policy, rollout, cfg.temperature, cfg.batch_size)
        ref_logprobs = batched_response_logprobs(reference, rollout, cfg.temperature, cfg.batch_size)
        out.kl += ((logprobs - ref_logprobs) * rollout.response_mask).sum(1).tolist()
        out.lengths += rollout.response_mask.sum(1).long().tolist()
        out.completions += tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
    return out


def reward_sources(cfg: EvaluationConfig, resolve: Callable[[str], str]) -> dict[str, Callable]:
    from reward_models import FunctionReward
    from reward_models.learned import LearnedRewardModel

    sources: dict[str, Callable] = {}
    if cfg.gold:
        sources["gold"] = FunctionReward(cfg.gold)
    if cfg.reward_model:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sources["reward_model"] = LearnedRewardModel.load(resolve(cfg.reward_model), device=device)
    return sources


def evaluate(
    cfg: EvaluationConfig,
    resolve: Callable[[str], str],
    out_dir: Path,
    seed: int,
    history: list[dict] | None = None,
    training: dict | None = None,
) -> dict[str, Any]:
    """Write metrics.json, samples.jsonl and report.md into out_dir; returns the metrics."""
    from pipeline.report import write_report

    seed = cfg.seed if cfg.seed is not None else seed
    prompts = [r["prompt"] for r in load_rows(cfg.prompts, PROMPT_ONLY, "evaluation prompts")]
    prompts = prompts[: cfg.max_prompts] if cfg.max_prompts else prompts
    names = {"baseline": cfg.baseline, "candidate": cfg.candidate}
    reference = resolve(cfg.reference or cfg.baseline)
    sources = reward_sources(cfg, resolve)
    log(
        f"[eval] {len(prompts)} prompts x {cfg.samples_per_prompt} samples, policies {cfg.baseline} and "
        f"{cfg.candidate}, rewards: {', '.join(sources) or 'none'}"
    )

    samples: list[dict] = []
    per_policy: dict[str, dict[str, Any]] = {}
    rewards: dict[str, dict[str, list[float]]] = {}
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    for role, name in names.items():
        drawn = sample_policy(resolve(name), reference, prompts, cfg, seed, f"eval {name}")
        rewards[role] = {key: fn(repeated, drawn.completions).tolist() for key, fn in sources.items()}
        per_policy[name] = {
            "rewards": {k: estimate(v, repeated, cfg, seed) for k, v in rewards[role].items()},
            "kl_to_reference": estimate(drawn.kl, repeated, cfg, seed),
            "response_length": estimate([float(n) for n in drawn.lengths], repeated, cfg, seed),
        }
        for i, (prompt, completion) in enumerate(zip(repeated, drawn.completions)):
            samples.append(
                {
                    "policy": name,
                    "prompt": prompt,
                    "completion": completion,
                    "sample_index": i % cfg.samples_per_prompt,
                    "rewards": {k: v[i] for k, v in rewards[role].items()},
                    "kl": drawn.kl[i],
                }
            )
    differences = {
        key: paired_bootstrap_difference(
            rewards["candidate"][key],
            rewards["baseline"][key],
            groups=repeated,
            confidence=cfg.confidence,
            n_resamples=cfg.bootstrap_resamples,
            seed=seed,
        ).to_dict()
        for key in sources
    }
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
        },
        "training": training or {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    write_report(out_dir, metrics, samples, history or [])
    return metrics


def estimate(values: list[float], prompts: list[str], cfg: EvaluationConfig, seed: int) -> dict[str, float]:
    """Mean with a CI that resamples prompts (samples of one prompt are not independent); n = prompts."""
    result = bootstrap_mean(
        values, confidence=cfg.confidence, n_resamples=cfg.bootstrap_resamples, seed=seed, groups=prompts
    ).to_dict()
    return {**result, "samples": len(values)}
