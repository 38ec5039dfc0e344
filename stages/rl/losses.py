"""Loss terms of the RL engine: the registered policy losses (PPO-clip, GSPO's sequence clip, CISPO's
clipped importance weight), the ways to aggregate their per-token terms, PPO's value loss, the GRPO-style KL
term, and entropy.

Masked positions are neutralised before any exp or square so padding holding inf or NaN cannot reach the
value or the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.rl.kl import kl_estimate
from stages.rl.masking import masked_mean, masked_sum
from stages.rl.registry import PolicyLossTerms, register_policy_loss


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


@dataclass
class PolicyLossOutput:
    """loss is differentiable; clip_fraction and approx_kl are detached diagnostics."""

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


def _pessimistic(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> PolicyLossTerms:
    """max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high)), elementwise."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    # where, not torch.maximum: on ties maximum splits the gradient between the branches.
    is_clipped = clipped > unclipped
    return PolicyLossTerms(torch.where(is_clipped, clipped, unclipped), is_clipped)


@register_policy_loss("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> PolicyLossTerms:
    """PPO-clip (Schulman et al. 2017, eq. 7) per token, as a loss to minimise:

    r_t = exp(logprobs_t - old_logprobs_t);
    l_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - eps_low, 1 + eps_high)).
    eps_low == eps_high is PPO's; DAPO's clip-higher raises eps_high so unlikely tokens can gain probability.
    """
    ratio = torch.exp(_zero_masked(logprobs - old_logprobs, mask))
    return _pessimistic(ratio, _zero_masked(advantages, mask), clip_low, clip_high)


@register_policy_loss("sequence_clip")
def sequence_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> PolicyLossTerms:
    """GSPO (Zheng et al., 2025, eq. 5-7): one importance ratio per sequence, length-normalised,

    s_i = (pi(y_i) / pi_old(y_i))^(1 / |y_i|) = exp(mean_t (logprobs_t - old_logprobs_t));
    l_i = max(-A_i * s_i, -A_i * clip(s_i, 1 - eps_low, 1 + eps_high)), given to each token of y_i.
    With `seq-mean-token-mean` aggregation the loss is the mean of l_i over sequences, GSPO's objective;
    A_i is the sequence's advantage (the same on each of its tokens).
    """
    log_ratio = masked_mean(_zero_masked(logprobs - old_logprobs, mask), mask, dim=1)
    terms = _pessimistic(torch.exp(log_ratio)[:, None], _zero_masked(advantages, mask), clip_low, clip_high)
    return PolicyLossTerms(terms.per_token.expand_as(mask), terms.clipped.expand_as(mask))


@register_policy_loss("clipped_importance_weight")
def clipped_importance_weight(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> PolicyLossTerms:
    """CISPO (MiniMax-M1, 2025, eq. 4-5): clip the importance weight, not the update, and keep every token:

    w_t = sg(min(r_t, 1 + eps_high));  l_t = -w_t * A_t * logprobs_t.
    The gradient is -w_t * A_t * grad log pi: REINFORCE weighted by the capped ratio, so a token whose ratio
    ran past the cap still contributes (PPO-clip would zero its gradient). `clip_low` is unused, as in the
    paper's setting (no lower bound).
    """
    ratio = torch.exp(_zero_masked(logprobs - old_logprobs, mask))
    weight = torch.clamp(ratio, max=1.0 + clip_high).detach()
    per_token = -weight * _zero_masked(advantages, mask) * _zero_masked(logprobs, mask)
    return PolicyLossTerms(per_token, ratio > 1.0 + clip_high)


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> PolicyLossOutput:
    """PPO-clip as a token mean: loss = masked_mean(ppo_clip terms); clip_fraction = masked mean of [clipped
    term > unclipped term] (strictly: only there is the gradient 0); approx_kl = masked mean of
    0.5 * (logprobs - old_logprobs)^2."""
    terms = ppo_clip(logprobs, old_logprobs, advantages, mask, clip_range, clip_range)
    return PolicyLossOutput(
        loss=masked_mean(terms.per_token, mask),
        clip_fraction=masked_mean(terms.clipped.to(terms.per_token.dtype), mask).detach(),
        approx_kl=approx_kl(logprobs, old_logprobs, mask),
    )


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of 0.5 * (logprobs - old_logprobs)^2: how far an update moved (a detached diagnostic)."""
    return masked_mean(0.5 * _zero_masked(logprobs - old_logprobs, mask).detach() ** 2, mask)


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str, global_tokens: float, global_rows: float, max_length: int
) -> Tensor:
    """This process's part of one number from per-token loss terms l_{i,t}; the parts of all processes sum
    to it (`global_tokens`, `global_rows`: real tokens and rows with any, over every process).

    token-mean               sum_{i,t} l / sum_i |y_i|  (DAPO, TRL's default): every token weighs the same,
                             so a long response weighs more than a short one; no token's gradient is diluted
    seq-mean-token-mean      mean_i (sum_t l / |y_i|)   (original GRPO): every response weighs the same, so
                             a token of a short response weighs more; with a negative advantage a long wrong
                             answer is penalised less per token (the length bias Dr. GRPO points out)
    seq-mean-token-sum-norm  sum_{i,t} l / (G * L_max)  (Dr. GRPO): a constant normaliser, no length bias
    """
    if mode == "token-mean":
        return masked_sum(per_token, mask) / max(global_tokens, 1.0)
    if mode == "seq-mean-token-mean":
        return masked_mean(per_token, mask, dim=1).sum() / max(global_rows, 1.0)
    if mode == "seq-mean-token-sum-norm":
        return masked_sum(per_token, mask) / (max(global_rows, 1.0) * max_length)
    raise ValueError(f"unknown loss aggregation {mode!r}")


@dataclass
class ValueLossOutput:
    """loss is differentiable; clip_fraction is a detached diagnostic."""

    loss: Tensor
    clip_fraction: Tensor


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> ValueLossOutput:
    """Clipped value loss (PPO2 baselines, as in TRL):

    loss = 0.5 * masked_mean(max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2)).
    clip_fraction = masked mean of [clipped term > unclipped term].
    """
    values, old_values, returns = (_zero_masked(x, mask) for x in (values, old_values, returns))
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    is_clipped = clipped > unclipped
    per_token = torch.where(is_clipped, clipped, unclipped)
    return ValueLossOutput(
        loss=0.5 * masked_mean(per_token, mask),
        clip_fraction=masked_mean(is_clipped.to(per_token.dtype), mask).detach(),
    )


def kl_loss_term(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """masked_mean(kl_estimate(logprobs, ref_logprobs, kind)): a KL penalty as a loss term, GRPO style.

    Its value estimates KL(pi || pi_ref), but on samples of pi its expected *gradient* depends on the
    estimator: k3 (the default, as in GRPO and TRL) gives the gradient of the forward KL(pi_ref || pi); k2
    gives that of the reverse KL(pi || pi_ref); k1 gives zero (the config refuses it here). Later PPO epochs
    reuse samples of pi_old with no importance weight on this term, as TRL does by default.
    """
    return masked_mean(kl_loss_terms(logprobs, ref_logprobs, mask, kind), mask)


def kl_loss_terms(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimates with padding neutralised first (what `kl_loss_term` averages)."""
    return kl_estimate(_zero_masked(logprobs, mask), _zero_masked(ref_logprobs, mask), kind)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[B, T, V] -> [B, T]: H = -sum_v p_v log p_v with log p = logits - logsumexp(logits)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    # Tokens with p = 0 (logit -inf) contribute 0, not 0 * -inf = NaN, to the value and to the gradient.
    safe_log_probs = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    return -(probs * safe_log_probs).sum(dim=-1)
