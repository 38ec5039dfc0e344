"""The `evaluation` block of the pipeline config: which policies to sample on which prompts, the reward
sources that score them, and the statistics and report settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config_schema import InvalidValue
from pipeline.stage_config import (
    RolloutConfig,
    check_at_least,
    check_chat_template,
    check_function_spec,
    check_positive,
    check_positive_if_set,
    check_range,
    check_seed,
    check_source,
    input_field,
)
from stages.rl.health import thresholds


@dataclass
class EvaluationConfig:
    """Sampling and scoring of policies (before and after RL, and any others) on held-out prompts."""

    baseline: str = input_field("sft")  # the policy before RL: the one win rates are judged against
    candidate: str = input_field("ppo")  # the policy after RL
    reference: str | None = input_field(None)  # KL / perplexity reference; None: the baseline policy
    reward_model: str | None = input_field(None)  # learned reward model: stage name, path or hub id
    gold: str | None = None  # `module:function` gold scorer, used only here
    # more policies to evaluate beside baseline and candidate: display name -> stage name, path or hub id
    policies: dict[str, str] = field(default_factory=dict, metadata={"input": True})
    # more learned reward models (e.g. one trained on held-out preferences): display name -> source
    reward_models: dict[str, str] = field(default_factory=dict, metadata={"input": True})
    reward_functions: dict[str, str] = field(default_factory=dict)  # display name -> `module:function`
    prompts: str = ""  # data source of held-out prompts, {"prompt"}
    samples_per_prompt: int = 2
    max_prompts: int | None = None
    max_new_tokens: int = 24
    temperature: float = 1.0
    stop_token: str | None = None  # None: the tokenizer's EOS (set it like the RL stage's stop_token)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # the engine that samples the policies
    chat_template: str | None = None  # for conversational prompts: replaces every policy tokenizer's own
    batch_size: int = 128
    confidence: float = 0.95
    bootstrap_resamples: int = 2000
    seed: int | None = None
    distinct_n: int = 2  # report distinct-1 .. distinct-n of each policy's samples
    n_examples: int = 6  # prompts whose completions the report shows side by side
    evaluate_best_checkpoint: bool = True  # also sample the candidate's best snapshot by gold (if kept)
    health: dict[str, float] = field(default_factory=dict)  # training-health thresholds (stages/rl/health.py)

    def __post_init__(self) -> None:
        check_positive(
            self,
            "samples_per_prompt",
            "max_new_tokens",
            "temperature",
            "batch_size",
            "distinct_n",
            "bootstrap_resamples",
        )
        check_source(self, "baseline")
        check_source(self, "candidate")
        if self.baseline == self.candidate:
            raise InvalidValue(
                "candidate", f"is the baseline ({self.baseline!r}): compare two different policies."
            )
        check_function_spec("gold", self.gold)
        for name, spec in self.reward_functions.items():
            check_function_spec(f"reward_functions.{name}", spec)
        check_positive_if_set(self, "max_prompts", "all prompts")
        check_range(self, "confidence", 0, 1, low_open=True)
        check_at_least(self, 0, "n_examples")
        check_seed(self)
        check_chat_template(self)
        for key in ("policies", "reward_models"):
            for name, source in getattr(self, key).items():
                if not source:
                    raise InvalidValue(f"{key}.{name}", "must name a stage, a model folder or a hub id.")
        policy_names = [self.baseline, self.candidate]
        for name in self.policies:
            if name in policy_names or "." in name:
                raise InvalidValue(
                    f"policies.{name}",
                    "is taken (by baseline or candidate) or contains a '.': choose another name.",
                )
        reward_names = ["gold", "reward_model"]
        for name in [*self.reward_models, *self.reward_functions]:
            if name in reward_names or "." in name:
                raise InvalidValue(
                    name,
                    "names a reward source twice (gold, reward_model, reward_models and reward_functions "
                    "share one namespace) or contains a '.': choose another name.",
                )
            reward_names.append(name)
        try:
            thresholds(**self.health)
        except ValueError as exc:
            raise InvalidValue("health", f"is invalid: {exc}.") from exc
