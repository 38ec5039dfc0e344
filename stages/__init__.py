"""Training stages, one module per stage; this registry maps a stage kind to its module.

A stage module follows `stages.base.StageModule`: a typed `Config` and `run(ctx) -> StageResult` (and
optionally `check(config)`). A new stage kind is a new module plus one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from stages.base import StageModule

_MODULES = {
    "pretrain": "stages.pretrain",
    "sft": "stages.sft",
    "reward": "stages.reward",
    "rl": "stages.rl.stage",  # `algorithm:` picks the algorithm (stages/rl/algorithms.py; ppo by default)
    "dpo": "stages.dpo",
    "task": "stages.task",  # supervised fine-tuning: classification | token_classification | seq2seq
}


# Older names a config may still use, and the kind each stands for: `kind: ppo` (the classic pipeline's
# last step) is the rl stage, whose `algorithm` (ppo by default) picks what runs. A loaded config holds
# the kind, never the alias, so "ppo" names an algorithm only.
ALIASES = {"ppo": "rl"}


def known_kinds() -> list[str]:
    return list(_MODULES)


def stage_module(kind: str) -> StageModule:
    module: ModuleType = importlib.import_module(_MODULES[kind])
    return module  # type: ignore[return-value]  # checked by tests/test_config.py


def config_class(kind: str) -> type:
    return stage_module(kind).Config
