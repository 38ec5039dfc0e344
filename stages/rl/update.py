"""Several epochs of clipped policy-gradient updates over shuffled minibatches of one rollout batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.faults import crash_point
from pipeline.log import log
from pipeline.models import token_scores
from stages.rl.losses import clipped_policy_loss, clipped_value_loss, entropy_from_logits, kl_loss_term
from stages.rl.masking import masked_mean
from stages.rl.rollout import Rollout, response_logits, token_logprobs


@dataclass
class UpdateBatch:
    rollout: Rollout
    old_logprobs: Tensor
    ref_logprobs: Tensor
    advantages: Tensor
    old_values: Tensor | None = None  # PPO's value head only
    returns: Tensor | None = None


@dataclass
class UpdateSettings:
    epochs: int
    minibatch_size: int
    clip_range: float
    value_clip_range: float
    vf_coef: float
    temperature: float
    max_grad_norm: float
    kl_loss_coef: float  # > 0: KL to the reference as a loss term (GRPO style)
    kl_estimator: str
    skip_nonfinite: bool


class NonFiniteLoss(UserError):
    pass


def update(
    settings: UpdateSettings,
    accelerator,
    policy,
    value_model,
    optimizer,
    batch: UpdateBatch,
    step: int,
    stage: str,
    last_checkpoint: str | None,
) -> dict[str, float]:
    rollout, mask = batch.rollout, batch.rollout.response_mask
    ids, seq_mask, width = rollout.sequence_ids, rollout.sequence_mask, rollout.query_ids.shape[1]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals: dict[str, float] = {}
    count = 0
    for _ in range(settings.epochs):
        for part in torch.randperm(ids.shape[0]).split(settings.minibatch_size):
            logits = response_logits(policy, ids[part], seq_mask[part], width)
            logprobs = token_logprobs(logits, rollout.response_ids[part], settings.temperature)
            pg = clipped_policy_loss(
                logprobs, batch.old_logprobs[part], batch.advantages[part], mask[part], settings.clip_range
            )
            loss, stats = (
                pg.loss,
                {"policy_loss": pg.loss, "clip_fraction": pg.clip_fraction, "approx_kl": pg.approx_kl},
            )
            if value_model is not None:
                values = token_scores(value_model, ids[part], seq_mask[part])[:, width - 1 : -1].float()
                vf = clipped_value_loss(
                    values, batch.old_values[part], batch.returns[part], mask[part], settings.value_clip_range
                )
                loss = loss + settings.vf_coef * vf.loss
                stats.update(value_loss=vf.loss, value_clip_fraction=vf.clip_fraction)
            if settings.kl_loss_coef > 0:
                kl = kl_loss_term(logprobs, batch.ref_logprobs[part], mask[part], settings.kl_estimator)
                loss = loss + settings.kl_loss_coef * kl
                stats["kl_loss"] = kl
            if not torch.isfinite(loss):
                if not settings.skip_nonfinite:
                    where = (
                        f"the last good checkpoint is {last_checkpoint}"
                        if last_checkpoint
                        else "no checkpoint yet"
                    )
                    raise NonFiniteLoss(
                        f"Stage '{stage}': the loss became {loss.item()} at RL step {step}; "
                        f"stopped before updating the weights ({where}). Lower the learning "
                        "rate, or set skip_nonfinite: true to skip such minibatches."
                    )
                log(f"[{stage}] step {step}: non-finite loss, minibatch skipped")
                continue
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            crash_point("ppo.update", step)
            with torch.no_grad():
                stats["entropy"] = masked_mean(
                    entropy_from_logits(logits.float() / settings.temperature), mask[part]
                )
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            count += 1
    return {key: value / max(count, 1) for key, value in totals.items()}
