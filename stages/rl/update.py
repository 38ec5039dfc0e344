"""Several epochs of clipped policy-gradient updates over shuffled minibatches of one rollout batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline import distributed
from pipeline.errors import UserError
from pipeline.faults import crash_point
from pipeline.log import log
from pipeline.models import token_scores
from stages.rl.losses import aggregate, approx_kl, clipped_value_loss, entropy_from_logits, kl_loss_terms
from stages.rl.masking import masked_sum
from stages.rl.models import SharedValueHead
from stages.rl.registry import PolicyLossTerms
from stages.rl.rollout import Rollout, response_logits, response_logits_and_values, token_logprobs


@dataclass
class UpdateBatch:
    rollout: Rollout
    old_logprobs: Tensor
    ref_logprobs: Tensor
    advantages: Tensor
    old_values: Tensor | None = None  # PPO's value head only
    returns: Tensor | None = None
    loss_mask: Tensor | None = None  # tokens in the loss; None: every response token (see mask_truncated)
    # truncated importance-sampling weights on each token's policy-gradient term (stages/rl/mismatch.py);
    # None: the sampler is the trainer
    tis_weights: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        return self.rollout.response_mask if self.loss_mask is None else self.loss_mask


@dataclass
class UpdateSettings:
    epochs: int
    minibatch_size: int
    micro_batch_size: int | None  # rows per forward/backward; gradients accumulate over a minibatch
    policy_loss: Callable[..., PolicyLossTerms]  # a registered policy loss
    aggregation: str  # how its per-token terms become one number (losses.aggregate)
    clip_low: float
    clip_high: float
    max_length: int  # max_new_tokens: the constant of seq-mean-token-sum-norm
    value_clip_range: float
    vf_coef: float
    temperature: float
    max_grad_norm: float
    kl_loss_coef: float  # > 0: KL to the reference as a loss term (GRPO style)
    kl_estimator: str
    skip_nonfinite: bool
    # every process runs as many micro-batches as the busiest (weight-0 ones to make up): a sharded model's
    # forward and backward are collectives every process must join
    equal_micro_batches: bool = False
    sync_gradients: Callable[[list], None] = distributed.sync_gradients  # the engine's: summed over processes


class NonFiniteLoss(UserError):
    pass


def minibatches(global_rows: int, size: int, seed: int, step: int, epoch: int, local: slice) -> list[Tensor]:
    """A seeded permutation of the global batch cut into minibatches; each process keeps the indices (into its
    own rows) of the ones it holds, possibly none."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step * 10_007 + epoch)
    order = torch.randperm(global_rows, generator=generator)
    held = [chunk[(chunk >= local.start) & (chunk < local.stop)] - local.start for chunk in order.split(size)]
    return held


def update(
    settings: UpdateSettings,
    policy,
    value_model,
    optimizer,
    batch: UpdateBatch,
    step: int,
    stage: str,
    last_checkpoint: str | None,
    seed: int,
    local: slice,
    global_rows: int,
) -> dict[str, float]:
    """Each minibatch's loss is aggregated over the *global* minibatch: every process computes its part (its
    own terms over the global token or row count) and gradients are summed over processes, so one process
    and several take the same step."""
    rollout, mask = batch.rollout, batch.mask
    ids, seq_mask, width = rollout.sequence_ids, rollout.sequence_mask, rollout.query_ids.shape[1]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    totals: dict[str, float] = {}
    count = 0
    for epoch in range(settings.epochs):
        for part in minibatches(global_rows, settings.minibatch_size, seed, step, epoch, local):
            optimizer.zero_grad(set_to_none=True)
            local_counts = torch.stack([mask[part].sum(), (mask[part].sum(1) > 0).sum()]).double()
            tokens, rows = distributed.all_sum(local_counts).tolist()  # of the global minibatch
            stats: dict[str, Tensor] = {}
            loss = torch.zeros((), device=mask.device)
            # every micro-batch's part is taken over the whole minibatch's counts, so accumulating their
            # gradients gives the minibatch's gradient exactly
            micros = [
                micro
                for micro in part.split(settings.micro_batch_size or max(len(part), 1))
                if len(micro) and mask[micro].sum() > 0
            ]
            weights = [1.0] * len(micros)
            if settings.equal_micro_batches:
                missing = int(distributed.all_max(len(micros))) - len(micros)
                micros += [torch.zeros(1, dtype=torch.long)] * missing  # any row: its loss counts 0 times
                weights += [0.0] * missing
            for micro, weight in zip(micros, weights):
                micro_loss, micro_stats = minibatch_backward(
                    settings, policy, value_model, batch, micro, ids, seq_mask, width, tokens, rows, weight
                )
                loss = loss + micro_loss
                for key, value in micro_stats.items():
                    stats[key] = stats.get(key, 0.0) + value
            # A non-finite loss has already put NaNs in this minibatch's gradients; no step is taken with them
            # (the next minibatch starts from zero_grad).
            if not distributed.all_true(bool(torch.isfinite(loss))):
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
            settings.sync_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            crash_point("ppo.update", step)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
            count += 1
    # every process adds its part of each minibatch's statistics: the sum over processes is the global value.
    # The keys are fixed, not taken from `totals`: a process without rows has none, and collectives of
    # different sizes would leave both processes waiting forever.
    keys = ["approx_kl", "clip_fraction", "entropy", "policy_loss"]
    keys += ["value_clip_fraction", "value_loss"] if value_model is not None else []
    keys += ["kl_loss"] if settings.kl_loss_coef > 0 else []
    summed = distributed.all_sum(torch.tensor([totals.get(k, 0.0) for k in keys], dtype=torch.float64))
    return {key: float(value) / max(count, 1) for key, value in zip(keys, summed)}


def minibatch_backward(
    settings: UpdateSettings,
    policy,
    value_model,
    batch: UpdateBatch,
    part: Tensor,
    ids: Tensor,
    seq_mask: Tensor,
    width: int,
    tokens: float,
    rows: float,
    weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Back-propagate this process's part of the minibatch's loss (`tokens`, `rows`: the global minibatch's
    real tokens and rows); returns the (detached) part and this process's part of each statistic. `weight`
    0 runs the passes (a sharded model's collectives) and adds nothing to the gradients or statistics.

    The policy loss is the registered one, aggregated the configured way; the KL term is aggregated the same
    way; the value loss and the diagnostics are token means. A separate value model: the policy's loss goes
    backward before the value model's forward. The two share no parameters, so the gradients are those of
    one backward of their sum, but only one graph's activations are alive at a time. A shared value head:
    one forward gives logits and values, one backward their sum.
    """
    rollout, mask = batch.rollout, batch.mask[part]
    shared = isinstance(value_model, SharedValueHead)
    if shared:
        logits, values = response_logits_and_values(policy, value_model, ids[part], seq_mask[part], width)
    else:
        logits = response_logits(policy, ids[part], seq_mask[part], width)
    logprobs = token_logprobs(logits, rollout.response_ids[part], settings.temperature)

    def token_mean(x: Tensor) -> Tensor:  # this process's part of a mean over the global minibatch's tokens
        return masked_sum(x, mask) / tokens

    def aggregated(per_token: Tensor) -> Tensor:
        return aggregate(per_token, mask, settings.aggregation, tokens, rows, settings.max_length)

    with torch.no_grad():
        entropy = token_mean(entropy_from_logits(logits.float() / settings.temperature))
    del logits
    old_logprobs = batch.old_logprobs[part]
    terms = settings.policy_loss(
        logprobs, old_logprobs, batch.advantages[part], mask, settings.clip_low, settings.clip_high
    )
    per_token = terms.per_token if batch.tis_weights is None else terms.per_token * batch.tis_weights[part]
    loss = aggregated(per_token)
    stats = {
        "policy_loss": loss,
        "clip_fraction": token_mean(terms.clipped.float()),
        "approx_kl": approx_kl(logprobs, old_logprobs, mask) * float(mask.sum()) / tokens,
        "entropy": entropy,
    }
    if settings.kl_loss_coef > 0:
        kl = aggregated(kl_loss_terms(logprobs, batch.ref_logprobs[part], mask, settings.kl_estimator))
        loss = loss + settings.kl_loss_coef * kl
        stats["kl_loss"] = kl
    if value_model is None:
        (loss * weight).backward()
        return weighted(loss, stats, weight)
    if not shared:
        (loss * weight).backward()  # frees the policy's graph before the value model runs
        loss = loss.detach()
        values = token_scores(value_model, ids[part], seq_mask[part])[:, width - 1 : -1]
    share = float(mask.sum()) / tokens  # the value loss is a token mean over the global minibatch
    vf = clipped_value_loss(
        values.float(), batch.old_values[part], batch.returns[part], mask, settings.value_clip_range
    )
    value_loss, value_clip_fraction = vf.loss * share, vf.clip_fraction * share
    stats.update(value_loss=value_loss, value_clip_fraction=value_clip_fraction)
    if shared:
        loss = loss + settings.vf_coef * value_loss
        (loss * weight).backward()
    else:
        (settings.vf_coef * value_loss * weight).backward()
        loss = loss + settings.vf_coef * value_loss.detach()
    return weighted(loss, stats, weight)


def weighted(loss: Tensor, stats: dict[str, Tensor], weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    return loss.detach() * weight, {key: value.detach() * weight for key, value in stats.items()}
