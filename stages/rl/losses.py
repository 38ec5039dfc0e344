"""Loss terms of the RL engine: PPO-clip policy and value losses, the GRPO-style KL term, and entropy.

Every loss is a masked mean over real tokens; masked positions are neutralised before any exp or square so
padding holding inf or NaN cannot reach the value or the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stages.rl.kl import kl_estimate
from stages.rl.masking import masked_mean


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


@dataclass
class PolicyLossOutput:
    """loss is differentiable; clip_fraction and approx_kl are detached diagnostics."""

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> PolicyLossOutput:
    """PPO-clip (Schulman et al. 2017, eq. 7), as a loss to minimise:

    ratio = exp(logprobs - old_logprobs);
    loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).
    clip_fraction = masked mean of [clipped term > unclipped term] (strictly: only there is the gradient 0);
    approx_kl = masked mean of 0.5 * (logprobs - old_logprobs)^2.
    """
    log_ratio = _zero_masked(logprobs - old_logprobs, mask)
    advantages = _zero_masked(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    # where, not torch.maximum: on ties maximum splits the gradient between the branches.
    is_clipped = clipped > unclipped
    per_token = torch.where(is_clipped, clipped, unclipped)
    return PolicyLossOutput(
        loss=masked_mean(per_token, mask),
        clip_fraction=masked_mean(is_clipped.to(per_token.dtype), mask).detach(),
        approx_kl=masked_mean(0.5 * log_ratio.detach() ** 2, mask),
    )


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
    per_token = kl_estimate(_zero_masked(logprobs, mask), _zero_masked(ref_logprobs, mask), kind)
    return masked_mean(per_token, mask)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[B, T, V] -> [B, T]: H = -sum_v p_v log p_v with log p = logits - logsumexp(logits)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    # Tokens with p = 0 (logit -inf) contribute 0, not 0 * -inf = NaN, to the value and to the gradient.
    safe_log_probs = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    return -(probs * safe_log_probs).sum(dim=-1)
