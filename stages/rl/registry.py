"""The RL family by name: advantage estimators, policy losses, and the algorithms that pair them.

An algorithm is an advantage estimator (rewards -> per-token advantages), a policy loss (per-token terms
from the new and old log-probabilities), a loss aggregation (how those terms become one number) and its
defaults. The built-in ones are registered in `stages/rl/algorithms.py`; another is one more registration
anywhere before the config is read:

    @register_advantage("my_estimator")
    def my_estimator(batch: ScoredBatch, cfg) -> Advantages: ...

    register_algorithm(Algorithm("my_algorithm", advantage="my_estimator"))

after which `algorithm: my_algorithm` trains with it, with no change to the stage or the update loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass
class Advantages:
    advantages: Tensor  # [B, T], zero on padding
    returns: Tensor | None = None  # [B, T] value targets (with a value model only)


@dataclass
class PolicyLossTerms:
    """Per-token terms of a policy loss, before aggregation; `clipped` marks where the clip took effect."""

    per_token: Tensor  # [B, T], differentiable
    clipped: Tensor  # [B, T] bool


@dataclass(frozen=True)
class Algorithm:
    name: str
    advantage: str  # a registered advantage estimator
    policy_loss: str = "ppo_clip"  # a registered policy loss
    aggregation: str = "token-mean"  # one of AGGREGATIONS
    kl_in_loss: bool = False  # default place of the KL to the reference: the loss (True) or the reward
    kl_coef: float = 0.05  # default weight of that KL
    needs_groups: bool = False  # compares samples of one prompt: group_size >= 2
    value_model: bool = False  # trains a value model (PPO's critic)
    clip_range_low: float | None = None  # default ratio clip below 1; None: `clip_range`
    clip_range_high: float | None = None  # default ratio clip above 1; None: `clip_range`
    dynamic_sampling: bool = False  # default: replace groups whose rewards are all equal (DAPO)
    overlong_shaping: bool = False  # default: a soft penalty over the last quarter of max_new_tokens (DAPO)
    mask_truncated: bool = False  # default: responses that never stop leave the loss (DAPO)


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Advantages]] = {}
POLICY_LOSSES: dict[str, Callable[..., PolicyLossTerms]] = {}
ALGORITHMS: dict[str, Algorithm] = {}


def register_advantage(name: str) -> Callable:
    """Decorator: `fn(batch: ScoredBatch, cfg) -> Advantages` becomes the estimator called `name`."""

    def register(fn: Callable[..., Advantages]) -> Callable[..., Advantages]:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


def register_policy_loss(name: str) -> Callable:
    """Decorator: `fn(logprobs, old_logprobs, advantages, mask, clip_low, clip_high) -> PolicyLossTerms`."""

    def register(fn: Callable[..., PolicyLossTerms]) -> Callable[..., PolicyLossTerms]:
        POLICY_LOSSES[name] = fn
        return fn

    return register


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    for kind, name, known in (
        ("advantage estimator", algorithm.advantage, ADVANTAGE_ESTIMATORS),
        ("policy loss", algorithm.policy_loss, POLICY_LOSSES),
    ):
        if name not in known:
            raise ValueError(f"algorithm {algorithm.name!r}: no {kind} {name!r} is registered")
    if algorithm.aggregation not in AGGREGATIONS:
        raise ValueError(f"algorithm {algorithm.name!r}: aggregation must be one of {AGGREGATIONS}")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm
