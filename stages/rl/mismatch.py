"""How far the sampler's distribution is from the trainer's, and the truncated importance-sampling weights
that correct the policy gradient for it (Yao et al., 2025, "Your efficient RL framework secretly brings
you off-policy RL training"; TRL, veRL and OpenRLHF apply the same correction to vLLM rollouts).

A rollout engine other than the trainer's own forward (a paged kernel, another library, bf16 against the
trainer's float32) gives each sampled token a slightly different probability than the trainer computes:
the samples come from pi_sampler while the update assumes pi_old (the trainer's). Weighting each token's
policy-gradient term by pi_old / pi_sampler, capped at C to bound the variance, restores the expectation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stages.rl.masking import masked_sum


def mismatch_sums(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """This process's sums for the step's mismatch statistics: [tokens, sum |delta logprob|, sum of k3
    estimates of KL(sampler || trainer)], to be summed over processes. delta = trainer - sampler; k3 =
    (r - 1) - log r with r = pi_trainer / pi_sampler, an unbiased, non-negative estimate under the sampler."""
    delta = (trainer_logprobs - sampler_logprobs).float()
    k3 = torch.expm1(delta) - delta
    return torch.stack([mask.sum(), masked_sum(delta.abs(), mask), masked_sum(k3, mask)]).double()


def mismatch_max(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """The largest |delta logprob| over this process's real tokens (0 without any)."""
    delta = (trainer_logprobs - sampler_logprobs).abs().float() * mask
    return delta.max() if delta.numel() else torch.zeros(())


def mismatch_metrics(sums: Tensor, largest: float) -> dict[str, float]:
    """The history's mismatch entries from the global sums of `mismatch_sums` and the global max."""
    tokens, absolute, k3 = sums.tolist()
    tokens = max(tokens, 1.0)
    return {
        "mismatch/logprob_mean": absolute / tokens,
        "mismatch/logprob_max": largest,
        "mismatch/kl": k3 / tokens,
    }


def truncated_is_weights(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float
) -> Tensor:
    """Per-token weights min(pi_trainer / pi_sampler, cap) on real tokens, 1 on padding; no gradient."""
    ratio = torch.exp((trainer_logprobs - sampler_logprobs).float()).clamp(max=cap)
    return torch.where(mask.bool(), ratio, torch.ones_like(ratio)).detach()
