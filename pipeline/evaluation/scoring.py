"""The evaluation's reward sources by name: the gold scorer, learned reward models and reward functions."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.evaluation.config import EvaluationConfig
from pipeline.evaluation.result import GOLD, PROXY
from reward_models import FunctionReward
from reward_models.learned import LearnedRewardModel


def reward_sources(cfg: EvaluationConfig, resolve: Callable[[str], str]) -> dict[str, Callable]:
    """Every reward source by display name: gold, reward_model, reward_models, reward_functions."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sources: dict[str, Callable] = {}
    if cfg.gold:
        sources[GOLD] = FunctionReward(cfg.gold)
    learned = {PROXY: cfg.reward_model} if cfg.reward_model else {}
    for name, source in {**learned, **cfg.reward_models}.items():
        sources[name] = LearnedRewardModel.load(resolve(source), name=name, device=device)
    for name, spec in cfg.reward_functions.items():
        sources[name] = FunctionReward(spec)
    return sources


def source_descriptions(cfg: EvaluationConfig) -> dict[str, str]:
    """What each reward source is, as written in the config (for the report's settings)."""
    described = {GOLD: cfg.gold} if cfg.gold else {}
    if cfg.reward_model:
        described[PROXY] = cfg.reward_model
    return {**described, **cfg.reward_models, **cfg.reward_functions}
