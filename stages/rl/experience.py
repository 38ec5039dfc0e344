"""What one RL step learns from: the models an RL stage holds, rollouts sampled and scored, and the
log-probabilities, values and KL of those rollouts under the policy and its reference.

The stage (stages/rl/stage.py) calls these in order; each is a short function of its inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline import distributed
from pipeline.errors import ConfigError
from pipeline.faults import crash_point
from pipeline.models import token_scores
from stages.rl import algorithms
from stages.rl.generation import GenerationRequest, RolloutEngine
from stages.rl.kl import masked_kl
from stages.rl.models import (
    SharedValueHead,
    backbone_and_lm_head,
    build_policy,
    build_reference,
    build_value_model,
    reference_mode,
)
from stages.rl.noise import SamplingNoise
from stages.rl.rewards import RewardMix, build_reward_mix, overlong_penalty, penalize_unfinished
from stages.rl.rollout import (
    Rollout,
    batched_logprobs_and_values,
    batched_response_logprobs,
    left_pad,
    sample,
)


@dataclass
class RLModels:
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None with LoRA: the policy with its adapter disabled
    rewards: RewardMix
    value_model: torch.nn.Module | None  # PPO's critic: a second model, or a head on the policy's trunk
    tokenizer: object

    @property
    def trained(self) -> dict[str, torch.nn.Module]:
        """The models the optimizer updates, by the name their checkpoint files carry."""
        return {"policy": self.policy, **({"value_model": self.value_model} if self.value_model else {})}

    def reference_context(self):
        return reference_mode(self.policy, self.reference)


def build_models(cfg, inputs: dict[str, str], tokenizer, device) -> RLModels:
    """Policy (+ frozen reference, or none with LoRA), reward sources, and the value model if the algorithm
    has one."""
    policy = build_policy(inputs["policy"], cfg.lora, cfg.trust_remote_code, cfg.dtype).to(device)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    rm_path = inputs.get("reward_model")
    rewards = build_reward_mix(
        rm_path,
        cfg.reward_model_weight,
        cfg.reward_functions,
        tokenizer,
        device,
        cfg.reward_clip,
        cfg.normalize_rewards,
        cfg.trust_remote_code,
    )
    value_model = None
    has_value_model = algorithms.get_algorithm(cfg.algorithm).value_model
    if has_value_model and cfg.shared_value_head:
        value_model = SharedValueHead(backbone_and_lm_head(policy)[1].in_features).to(device)
    elif has_value_model:
        from_rm = cfg.value_init == "reward_model"
        if from_rm and not rewards.sources[0].same_tokenizer:
            raise ConfigError(
                "The reward model's tokenizer differs from the policy's, so its weights cannot "
                "start a value head that reads policy tokens: set value_init: policy."
            )
        value_model = build_value_model(
            rm_path if from_rm else inputs["policy"], from_rm, cfg.trust_remote_code, cfg.dtype, cfg.lora
        ).to(device)
        value_model.config.pad_token_id = tokenizer.pad_token_id
    return RLModels(policy, build_reference(policy), rewards, value_model, tokenizer)


def shaped_scores(cfg, total: Tensor, rollout: Rollout) -> Tensor:
    """The reward sources' total less the penalties: never stopping (missing_eos_penalty) and DAPO's overlong
    shaping. Sampled and greedy (ReMax) responses are shaped alike."""
    total = total.to(rollout.response_ids.device)
    scores = penalize_unfinished(total, rollout.ended, cfg.missing_eos_penalty)
    if cfg.overlong_buffer:
        lengths = rollout.response_mask.sum(1)
        penalty = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
        scores = scores - penalty
    return scores


@dataclass
class Sampler:
    """Samples this process's prompts at one step and scores them (the `sample_and_score` of collect)."""

    cfg: object
    seed: int
    step: int
    models: RLModels
    prompt_ids: dict[str, list[int]]
    stop_ids: list[int]
    autocast: Callable
    engine: RolloutEngine
    seconds: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "score": 0.0})

    def __call__(self, prompts: list[str], row_weight: Tensor, round_index: int):
        cfg, tokenizer = self.cfg, self.models.tokenizer
        device = next(self.models.policy.parameters()).device
        encoded = [self.prompt_ids[p] for p in prompts]
        query_ids, query_mask = left_pad(encoded, tokenizer.pad_token_id, device)
        rows = distributed.shard(cfg.batch_size)
        first_row = rows.start * cfg.group_size if row_weight.sum() > 0 else 0  # a placeholder's rows: unused
        request = GenerationRequest(
            cfg.max_new_tokens,
            cfg.temperature,
            self.stop_ids,
            tokenizer.pad_token_id,
            noise=SamplingNoise(self.seed, self.step, first_row, round_index),
            seed=engine_seed(self.seed, self.step, round_index, distributed.rank()),
            synced=cfg.sharded,
        )
        started = time.perf_counter()
        with torch.no_grad(), self.autocast():
            rollout = self.engine.generate(self.models.policy.eval(), query_ids, query_mask, request)
        self.seconds["generate"] += time.perf_counter() - started
        crash_point("ppo.rollout", self.step)
        started = time.perf_counter()
        completions = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        eos = tokenizer.eos_token_id  # reward statistics are updated with round 0's scores only
        parts = self.models.rewards.score(
            rollout, prompts, completions, eos, weight=row_weight, update=round_index == 0
        )
        self.seconds["score"] += time.perf_counter() - started
        return rollout, shaped_scores(cfg, parts["total"], rollout), parts


def engine_seed(seed: int, step: int, round_index: int, rank: int) -> int:
    """The seed of an engine with its own RNG for one sampling round on one process (< 2^31)."""
    return (seed * 1_000_003 + step * 10_007 + round_index * 101 + rank) % (2**31 - 1)


def values_of(value_model, rollout: Rollout) -> Tensor:
    """V(s_t) for each response position: the value head read at the token before it."""
    scores = token_scores(value_model, rollout.sequence_ids, rollout.sequence_mask)
    return scores[:, rollout.query_ids.shape[1] - 1 : -1].float()


def reference_logprobs(models: RLModels, rollout: Rollout, temperature: float, chunk: int) -> Tensor:
    with models.reference_context() as reference:
        return batched_response_logprobs(reference, rollout, temperature, chunk)


@dataclass
class Behaviour:
    """The rollout under the policy that sampled it (pi_old) and under the reference."""

    logprobs: Tensor  # [B, T] log pi_old
    ref_logprobs: Tensor  # [B, T] log pi_ref
    values: Tensor | None  # [B, T] V(s_t), with a value model
    kl: Tensor  # [B, T] per-token KL estimate, 0 on padding


@torch.no_grad()
def behaviour(models: RLModels, rollout: Rollout, cfg, chunk: int) -> Behaviour:
    """One no-grad pass of the policy (with the shared value head's values), the value model's and the
    reference's, in chunks of `chunk` rows."""
    if isinstance(models.value_model, SharedValueHead):
        logprobs, values = batched_logprobs_and_values(
            models.policy, models.value_model, rollout, cfg.temperature, chunk
        )
    else:
        logprobs = batched_response_logprobs(models.policy, rollout, cfg.temperature, chunk)
        values = values_of(models.value_model, rollout) if models.value_model is not None else None
    ref = reference_logprobs(models, rollout, cfg.temperature, chunk)
    return Behaviour(logprobs, ref, values, masked_kl(logprobs, ref, rollout.response_mask, cfg.kl_estimator))


@torch.no_grad()
def greedy_baseline(
    cfg, models: RLModels, prompts: list[str], prompt_ids: dict[str, list[int]], stop_ids: list[int]
) -> tuple[Tensor, Tensor | None]:
    """ReMax's baseline: the greedy response to each prompt, scored like the samples (the same reward sources
    and penalties) and, when the KL is a reward penalty, with its per-token KL to the reference."""
    tokenizer = models.tokenizer
    device = next(models.policy.parameters()).device
    query_ids, query_mask = left_pad([prompt_ids[p] for p in prompts], tokenizer.pad_token_id, device)
    greedy = sample(
        models.policy,
        query_ids,
        query_mask,
        cfg.max_new_tokens,
        cfg.temperature,
        stop_ids,
        tokenizer.pad_token_id,
        greedy=True,
        synced=cfg.sharded,
    )
    text = tokenizer.batch_decode(greedy.response_ids, skip_special_tokens=True)
    raw = models.rewards.score(greedy, prompts, text, tokenizer.eos_token_id, update=False)["total"]
    scores = shaped_scores(cfg, raw, greedy)
    if cfg.kl_is_loss or cfg.kl_coef == 0:
        return scores, None
    chunk = cfg.micro_batch_size or cfg.batch_size * cfg.group_size
    logprobs = batched_response_logprobs(models.policy, greedy, cfg.temperature, chunk)
    ref = reference_logprobs(models, greedy, cfg.temperature, chunk)
    return scores, masked_kl(logprobs, ref, greedy.response_mask, cfg.kl_estimator)
