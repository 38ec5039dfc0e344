"""PPO for language models on Accelerate: sample, score, per-token KL penalty, GAE, clipped updates.

Follows Ziegler et al. (2019) and "The N+ implementation details of RLHF with PPO" (Huang et al., 2024):
the sequence reward lands on each response's real last token, the KL penalty on every token, advantages
are whitened per batch, and responses that never stop can be penalised.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from pipeline.config import LoraConfig, StageConfig, check_positive, input_field
from pipeline.data import PROMPT_ONLY, load_rows
from pipeline.errors import ConfigError, UserError
from pipeline.log import log
from pipeline.models import load_tokenizer, token_scores
from reward_models.learned import LearnedRewardModel
from stages.base import StageContext, StageResult
from stages.hf_trainer import save_with_adapter
from stages.rl import advantages as adv
from stages.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate
from stages.rl.losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits
from stages.rl.masking import masked_mean, place_sequence_reward
from stages.rl.models import build_policy, build_reference, build_value_model, reference_mode
from stages.rl.rollout import Rollout, batched_response_logprobs, response_logits, sample, token_logprobs


@dataclass
class Config(StageConfig):
    policy: str = input_field("sft")  # the policy to improve: stage name, path or hub id
    reward_model: str = input_field("reward")  # learned reward model: stage name, path or hub id
    value_init: Literal["reward_model", "policy"] = "reward_model"
    prompts: str = ""  # {"prompt"} rows
    total_episodes: int = 1024  # sampled responses over the whole stage
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 16
    ppo_epochs: int = 4
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    max_prompt_length: int = 64
    max_new_tokens: int = 24
    temperature: float = 1.0
    stop_token: str | None = None  # None: the tokenizer's EOS
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of responses that never stop
    lora: LoraConfig = field(default_factory=LoraConfig)
    log_every: int = 1

    def __post_init__(self) -> None:
        check_positive(
            self,
            "total_episodes",
            "batch_size",
            "minibatch_size",
            "ppo_epochs",
            "lr",
            "temperature",
            "max_new_tokens",
        )
        if self.batch_size % self.minibatch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be divisible by minibatch_size ({self.minibatch_size})."
            )
        if not self.prompts:
            raise ConfigError("The PPO stage needs 'prompts': a data source of {\"prompt\"} rows.")


def check(cfg: Config) -> None:
    """Validate the prompts up front, before any stage of the run trains."""
    load_rows(cfg.prompts, PROMPT_ONLY, "RL prompts")


class PromptStream:
    """Prompts in a fresh seeded shuffle each epoch, so a batch never repeats within a pass."""

    def __init__(self, prompts: list[str], seed: int):
        self.prompts, self.rng, self.queue = prompts, random.Random(seed), []

    def next_batch(self, size: int) -> list[str]:
        while len(self.queue) < size:
            order = list(self.prompts)
            self.rng.shuffle(order)
            self.queue.extend(order)
        batch, self.queue = self.queue[:size], self.queue[size:]
        return batch


def encode_prompts(
    tokenizer, prompts: list[str], max_length: int, source: str = "prompts"
) -> list[list[int]]:
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for row, ids in enumerate(encoded, start=1):
        if len(ids) > max_length:
            raise UserError(
                f"{source}, row {row}: the prompt is {len(ids)} tokens, longer than max_prompt_length="
                f"{max_length} (raise max_prompt_length or shorten it): {prompts[row - 1][:80]!r}"
            )
    return encoded


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def score_rollout(reward: LearnedRewardModel, rollout: Rollout, eos_id: int) -> torch.Tensor:
    """Reward-model score of each prompt + response, formatted as in reward training (ending in EOS)."""
    sequences = []
    for row in range(rollout.query_ids.shape[0]):
        query = rollout.query_ids[row][rollout.query_mask[row].bool()].tolist()
        response = rollout.response_ids[row, : int(rollout.last_index[row]) + 1].tolist()
        if response[-1] != eos_id:
            response.append(eos_id)
        sequences.append(query + response)
    return reward.score_ids(sequences)


def values_of(value_model, rollout: Rollout) -> torch.Tensor:
    """V(s_t) for each response position: the value head read at the token before it."""
    scores = token_scores(value_model, rollout.sequence_ids, rollout.sequence_mask)
    return scores[:, rollout.query_ids.shape[1] - 1 : -1].float()


def run(ctx: StageContext) -> StageResult:
    from accelerate import Accelerator

    cfg: Config = ctx.config
    accelerator = Accelerator()
    device = accelerator.device
    prompts = [r["prompt"] for r in load_rows(cfg.prompts, PROMPT_ONLY, "RL prompts")]

    # 1. models: policy (+ reference), value model, frozen reward model
    tokenizer = load_tokenizer(ctx.inputs["policy"], cfg.trust_remote_code)
    prompt_ids = dict(zip(prompts, encode_prompts(tokenizer, prompts, cfg.max_prompt_length, cfg.prompts)))
    stop_ids = [tokenizer.eos_token_id]
    if cfg.stop_token:
        stop_ids = tokenizer.convert_tokens_to_ids([cfg.stop_token])
        if stop_ids[0] in (None, tokenizer.unk_token_id):
            raise ConfigError(
                f"stop_token {cfg.stop_token!r} is not a single token of the policy's tokenizer."
            )
    policy = build_policy(ctx.inputs["policy"], cfg.lora, cfg.trust_remote_code)
    reference = build_reference(policy)
    value_source = ctx.inputs["reward_model"] if cfg.value_init == "reward_model" else ctx.inputs["policy"]
    value_model = build_value_model(value_source, cfg.value_init == "reward_model", cfg.trust_remote_code)
    value_model.config.pad_token_id = tokenizer.pad_token_id
    reward = LearnedRewardModel.load(
        ctx.inputs["reward_model"], device=device, trust_remote_code=cfg.trust_remote_code
    )
    if reward.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            "The reward model's tokenizer differs from the policy's; use a reward model trained from "
            "the same tokenizer."
        )
    if reference is not None:
        reference.to(device)
    trainable = [p for m in (policy, value_model) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, eps=1e-5)
    policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )

    stream = PromptStream(prompts, ctx.seed)
    generator = torch.Generator(device=device).manual_seed(ctx.seed)
    steps = max(1, cfg.total_episodes // cfg.batch_size)
    history: list[dict] = []
    started = time.time()
    progress = tqdm(range(1, steps + 1), desc=f"{ctx.name}", disable=not accelerator.is_main_process)
    for step in progress:
        # 2. rollout
        batch_prompts = stream.next_batch(cfg.batch_size)
        query_ids, query_mask = left_pad(
            [prompt_ids[p] for p in batch_prompts], tokenizer.pad_token_id, device
        )
        unwrapped = accelerator.unwrap_model(policy)
        unwrapped.eval()
        rollout = sample(
            unwrapped,
            query_ids,
            query_mask,
            cfg.max_new_tokens,
            cfg.temperature,
            stop_ids,
            tokenizer.pad_token_id,
            generator,
        )
        mask = rollout.response_mask
        with torch.no_grad():
            old_logprobs = batched_response_logprobs(unwrapped, rollout, cfg.temperature, cfg.batch_size)
            with reference_mode(unwrapped, reference) as ref_model:
                ref_logprobs = batched_response_logprobs(ref_model, rollout, cfg.temperature, cfg.batch_size)
            old_values = values_of(value_model, rollout)
            scores = score_rollout(reward, rollout, tokenizer.eos_token_id).to(device)
        if cfg.missing_eos_penalty is not None:
            scores = torch.where(rollout.ended, scores, scores - cfg.missing_eos_penalty)

        # 3. rewards: KL penalty on every token, the sequence score on the last real one
        kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask
        rewards = -kl_ctl.value * kl + place_sequence_reward(scores, rollout.last_index, mask.shape[1])
        if cfg.whiten_rewards:
            rewards = adv.whiten(rewards, mask, shift_mean=False)
        advantages, returns = adv.gae(rewards, old_values * mask, mask, cfg.gamma, cfg.lam)
        advantages = adv.whiten(advantages, mask)

        # 4. several epochs of clipped updates over shuffled minibatches
        policy.train()
        stats = ppo_update(
            cfg,
            accelerator,
            policy,
            value_model,
            optimizer,
            rollout,
            old_logprobs,
            old_values,
            advantages,
            returns,
        )
        mean_kl = kl.sum(1).mean().item()
        kl_coef = kl_ctl.value  # the coefficient that shaped this step's rewards
        kl_ctl.update(mean_kl, cfg.batch_size)

        # 5. log
        row = {
            "step": step,
            "episodes": step * cfg.batch_size,
            "reward": scores.mean().item(),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "non_score_reward": (-kl_coef * kl).sum(1).mean().item(),
            "response_length": mask.sum(1).mean().item(),
            "ended_fraction": rollout.ended.float().mean().item(),
            "elapsed_s": time.time() - started,
            **stats,
        }
        for key in ("reward", "kl", "policy_loss", "value_loss"):
            if not torch.isfinite(torch.tensor(row[key])):
                raise UserError(f"PPO step {step}: {key} is {row[key]}; stopping before writing NaN weights.")
        history.append(row)
        if step % cfg.log_every == 0:
            progress.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")

    # 6. save the policy (LoRA merged; the adapter kept beside it)
    elapsed = time.time() - started
    save_with_adapter(accelerator.unwrap_model(policy), tokenizer, ctx.out_dir)
    window = max(1, len(history) // 4)
    metrics = {
        "steps": float(steps),
        "episodes": float(steps * cfg.batch_size),
        "reward_first": sum(r["reward"] for r in history[:window]) / window,
        "reward_last": sum(r["reward"] for r in history[-window:]) / window,
        "kl_last": history[-1]["kl"],
        "episodes_per_second": steps * cfg.batch_size / elapsed,
    }
    log(f"[{ctx.name}] {metrics['episodes_per_second']:.1f} episodes/s")
    return StageResult(metrics=metrics, history=history)


def ppo_update(
    cfg: Config,
    accelerator,
    policy,
    value_model,
    optimizer,
    rollout: Rollout,
    old_logprobs,
    old_values,
    advantages,
    returns,
) -> dict[str, float]:
    batch = rollout.query_ids.shape[0]
    width = rollout.query_ids.shape[1]
    ids, seq_mask, mask = rollout.sequence_ids, rollout.sequence_mask, rollout.response_mask
    totals: dict[str, float] = {}
    count = 0
    for _ in range(cfg.ppo_epochs):
        for part in torch.randperm(batch).split(cfg.minibatch_size):
            logits = response_logits(policy, ids[part], seq_mask[part], width)
            logprobs = token_logprobs(logits, rollout.response_ids[part], cfg.temperature)
            values = token_scores(value_model, ids[part], seq_mask[part])[:, width - 1 : -1].float()
            pg = clipped_policy_loss(
                logprobs, old_logprobs[part], advantages[part], mask[part], cfg.clip_range
            )
            vf = clipped_value_loss(values, old_values[part], returns[part], mask[part], cfg.value_clip_range)
            loss = pg.loss + cfg.vf_coef * vf.loss
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm
            )
            optimizer.step()
            with torch.no_grad():
                entropy = masked_mean(
                    entropy_from_logits(logits.detach().float() / cfg.temperature), mask[part]
                )
            for key, value in (
                ("policy_loss", pg.loss),
                ("value_loss", vf.loss),
                ("clip_fraction", pg.clip_fraction),
                ("approx_kl", pg.approx_kl),
                ("value_clip_fraction", vf.clip_fraction),
                ("entropy", entropy),
            ):
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            count += 1
    return {key: value / count for key, value in totals.items()}
