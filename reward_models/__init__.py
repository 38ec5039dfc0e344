"""Every reward source behind one interface: learned reward models, reward functions, gold scorers.

A source is called as `source(prompts, completions) -> Tensor[N]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reward_models.functions import call_reward_function, load_reward_function


@dataclass
class FunctionReward:
    spec: str  # module:function

    def __post_init__(self) -> None:
        self.name = self.spec
        self.fn = load_reward_function(self.spec)

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> torch.Tensor:
        return call_reward_function(self.fn, self.spec, prompts, completions, **kwargs)
