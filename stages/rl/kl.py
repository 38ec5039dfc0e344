"""KL(pi || pi_ref) per-token estimators and the KL-coefficient controllers (fixed, and adaptive after
Ziegler et al. 2019) that weight the penalty in PPO / REINFORCE rewards or the GRPO loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k1") -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL divergence").

    r = logprobs - ref_logprobs;  k1 = r (unbiased, high variance, can be negative);
    k2 = 0.5 * r^2 (biased, low variance);  k3 = exp(-r) - 1 + r (unbiased, always >= 0).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    # expm1 keeps k3 accurate near r = 0, where exp(-r) - 1 would cancel catastrophically in float32.
    return torch.expm1(-log_ratio) + log_ratio


def masked_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k1") -> Tensor:
    """`kl_estimate` where mask == 1 and exactly 0 elsewhere, selected rather than multiplied: a -inf or NaN
    log-probability at a padded slot would otherwise make the row's sum (and an adaptive KL coefficient)
    NaN."""
    estimate = kl_estimate(logprobs, ref_logprobs, kind)
    return torch.where(mask.bool(), estimate, torch.zeros_like(estimate))


class FixedKLController:
    """A constant KL coefficient beta; `update` is a no-op so both controllers are interchangeable."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, d: dict) -> None:
        self.value = float(d["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, section 2.2) steering the observed KL towards `target`.

    e = clip(current_kl / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        # The clip bounds how far one noisy KL estimate can move the coefficient.
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, d: dict) -> None:
        self.value = float(d["value"])
