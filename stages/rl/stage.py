"""The RL stage: PPO, GRPO, RLOO or REINFORCE on one engine (sampling, rewards, KL, updates, checkpoints).

Each step: sample `group_size` responses for each of `batch_size` prompts with the KV cache; score them
(learned reward models and reward functions); put the KL to the frozen reference into the reward (a
per-token penalty) or into the loss; turn rewards into advantages the algorithm's way (algorithms.py);
run clipped policy-gradient updates (update.py). PPO follows Ziegler et al. (2019) and "The N+
implementation details of RLHF with PPO" (Huang et al., 2024): the score lands on each response's real
last token, advantages are whitened, and responses that never stop can be penalised.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from accelerate.utils import LoggerType
from tqdm.auto import tqdm

from pipeline import distributed, diversity
from pipeline.chat import render_prompt, use_template
from pipeline.config_schema import InvalidValue, to_dict
from pipeline.data import PROMPT_ONLY, is_conversational, load_rows
from pipeline.errors import ConfigError, UserError
from pipeline.log import log
from pipeline.models import load_tokenizer
from pipeline.stage_config import (
    LoraConfig,
    RolloutConfig,
    StageConfig,
    check_at_least,
    check_choice,
    check_function_spec,
    check_positive,
    check_positive_if_set,
    check_range,
    check_source,
    check_trackers,
    input_field,
)
from reward_models.functions import load_reward_function
from reward_models.learned import LearnedRewardModel
from stages.base import StageContext, StageResult
from stages.outputs import logs_dir, parameters_held
from stages.rl import algorithms, checkpoint, memory_plan, registry
from stages.rl.advantages import RunningMeanBaseline
from stages.rl.collect import PromptStream, collect
from stages.rl.engine import ENGINES, is_sharded, make_engine
from stages.rl.experience import Sampler, behaviour, build_models, greedy_baseline
from stages.rl.generation import make_engine as make_rollout_engine
from stages.rl.health import HealthMonitor
from stages.rl.kl import AdaptiveKLController, FixedKLController
from stages.rl.mismatch import mismatch_max, mismatch_metrics, mismatch_sums, truncated_is_weights
from stages.rl.models import SharedValueHead, build_policy
from stages.rl.rewards import RewardMix
from stages.rl.rollout import (
    encode_prompts,
    left_pad,
    stop_token_ids,
)
from stages.rl.snapshots import SNAPSHOTS_FILE, Snapshotter
from stages.rl.update import UpdateBatch, UpdateSettings, update
from stages.tracking import log_run_files, run_files, set_locations, tracker_keys


@dataclass
class RLStageConfig(StageConfig):
    algorithm: str = "ppo"  # a registered algorithm (stages/rl/algorithms.py); see docs/algorithms.md
    policy_loss: str | None = None  # a registered policy loss; None: the algorithm's
    loss_aggregation: str | None = None  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    policy: str = input_field("sft")  # the policy to improve: stage name, path or hub id
    reward_model: str | None = input_field("reward")  # learned reward model: stage name, path or hub id
    reward_model_weight: float = 1.0
    reward_functions: dict[str, float] = field(default_factory=dict)  # module:function -> weight
    reward_clip: float | None = None  # clip the total score to [-c, c]
    normalize_rewards: bool = False  # divide scores by a running std after subtracting a running mean
    value_init: Literal["reward_model", "policy"] | None = None  # PPO's value model; None: the RM if any
    shared_value_head: bool = False  # PPO: the value head on the policy's trunk instead of a second model
    # replicated: whole models on every process; fsdp2: every model sharded over the processes (engine.py)
    engine: str = "replicated"
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # generation engine: hf | compiled | paged
    # Truncated importance sampling: when the rollout engine is not the trainer's own forward (paged), each
    # token's policy-gradient term is weighted by min(pi_trainer / pi_sampler, tis_cap). null: off.
    tis_cap: float | None = 2.0
    prompts: str = ""  # {"prompt"} rows
    total_episodes: int = 1024  # sampled responses over the whole stage
    batch_size: int = 64  # prompts per rollout
    group_size: int = 1  # samples per prompt (GRPO and RLOO need >= 2)
    minibatch_size: int = 16  # responses per gradient step (over all processes)
    # rows per forward/backward (gradients accumulate over the minibatch) and per no-grad pass (old and
    # reference log-probabilities, values). None: a whole minibatch / the whole batch at once.
    micro_batch_size: int | None = None
    ppo_epochs: int = 4  # update epochs over each rollout batch (all algorithms)
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    max_prompt_length: int = 64
    max_new_tokens: int = 24
    temperature: float = 1.0
    stop_token: str | None = None  # None: the tokenizer's EOS
    kl_coef: float | None = None  # None: the algorithm's (0.05; 0 for dapo, dr_grpo, gspo, cispo); 0: off
    kl_estimator: Literal["k1", "k2", "k3"] | None = None  # None: k1 as a reward penalty, k3 as a loss term
    # None: the algorithm's: in the loss for grpo, dr_grpo, gspo, cispo and reinforce_pp_baseline,
    # a per-token reward penalty otherwise (stages/rl/algorithms.py)
    kl_in_loss: bool | None = None
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_low: float | None = None  # ratio clip below 1; None: the algorithm's, else clip_range
    clip_range_high: float | None = None  # ratio clip above 1 (DAPO's clip-higher); None: likewise
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False  # PPO: (r - mean) / std + mean over the batch's token rewards, as TRL does
    # PPO, RLOO, REINFORCE: (A - mean) / std over the batch (GRPO's group normalisation already scales). After
    # REINFORCE's running or greedy baseline it only divides by the std, so that baseline stays the one used.
    whiten_advantages: bool = True
    scale_rewards: bool = True  # GRPO: divide by the group's std
    baseline: Literal["batch", "running", "greedy"] = "batch"  # REINFORCE
    baseline_momentum: float = 0.9  # running baseline: b <- momentum * b + (1 - momentum) * batch mean
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of responses that never stop
    # DAPO's overlong shaping: a penalty growing linearly to overlong_penalty over the last overlong_buffer
    # tokens before max_new_tokens. None: the algorithm's (dapo: a quarter of max_new_tokens), else off.
    overlong_buffer: int | None = None
    overlong_penalty: float = 1.0
    mask_truncated: bool | None = None  # leave responses that never stop out of the loss; None: algorithm's
    # DAPO's dynamic sampling: replace groups whose rewards are all equal (no signal) with groups of fresh
    # prompts, for at most max_sampling_rounds more rounds. None: the algorithm's (on for dapo).
    dynamic_sampling: bool | None = None
    max_sampling_rounds: int = 3
    lora: LoraConfig = field(default_factory=LoraConfig)
    log_every: int = 1
    checkpoint_every: int | None = None  # RL steps between resumable checkpoints; None: by time (below)
    # With checkpoint_every unset, a checkpoint is written after step 1 and then whenever the time since the
    # last one reaches its write time / checkpoint_overhead: as often as costs at most this fraction of the
    # stage's time (a 3 s write: every minute). null (and no checkpoint_every): no checkpoints.
    checkpoint_overhead: float | None = 0.05
    keep_checkpoints: int = 2  # newest verified checkpoints kept (the older one is the fallback)
    skip_nonfinite: bool = False  # skip a minibatch whose loss is NaN/inf instead of stopping
    eval_every: int | None = None  # RL steps between evaluation snapshots on held-out prompts
    eval_prompts: str | None = None  # {"prompt"} rows for the snapshots (the first eval_max_prompts)
    eval_max_prompts: int = 64
    eval_gold: str | None = None  # module:function gold scorer for the snapshots (never trained on)
    save_snapshot_weights: bool = True  # keep the policy of each snapshot (to pick the best one)

    def longest_sequence(self) -> tuple[int, str] | None:
        return self.max_prompt_length + self.max_new_tokens, "max_prompt_length + max_new_tokens"

    @property
    def sharded(self) -> bool:
        """Every process holds a shard of each model (`engine: fsdp2`), so decoding must stay in step."""
        return is_sharded(self.engine)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(
            self,
            "total_episodes",
            "batch_size",
            "group_size",
            "minibatch_size",
            "ppo_epochs",
            "lr",
            "temperature",
            "max_new_tokens",
            "max_prompt_length",
            "max_grad_norm",
            "clip_range",
            "value_clip_range",
            "kl_target",
            "kl_horizon",
            "reward_clip",
            "log_every",
            "keep_checkpoints",
            "eval_max_prompts",
            "micro_batch_size",
        )
        check_positive_if_set(self, "checkpoint_every", "checkpoints by checkpoint_overhead")
        check_positive_if_set(self, "eval_every", "no evaluation snapshots")
        check_range(self, "gamma", 0.0, 1.0, high_open=False)
        check_range(self, "lam", 0.0, 1.0, high_open=False)
        check_range(self, "baseline_momentum", 0.0, 1.0)  # 1 would never move from the first batch's mean
        check_range(self, "checkpoint_overhead", 0.0, 1.0, low_open=True)
        check_at_least(self, 0.0, "kl_coef", "vf_coef", "overlong_penalty", "max_sampling_rounds")
        check_positive(self, "overlong_buffer", "clip_range_low", "clip_range_high")
        check_choice(self, "algorithm", tuple(algorithms.known_algorithms()))
        check_choice(self, "engine", ENGINES)
        check_at_least(self, 1.0, "tis_cap")
        check_at_least(self, 0.0, "missing_eos_penalty")  # a negative one would reward never stopping
        check_source(self, "policy")
        for spec in self.reward_functions:
            check_function_spec(f"reward_functions.{spec}", spec)
        check_function_spec("eval_gold", self.eval_gold)
        check_trackers(self, tuple(tracker.value for tracker in LoggerType))
        episodes_per_step = self.batch_size * self.group_size
        if self.total_episodes < episodes_per_step:
            raise InvalidValue(
                "total_episodes",
                f"({self.total_episodes}) is less than one step's batch_size x group_size "
                f"({self.batch_size} x {self.group_size} = {episodes_per_step}).",
            )
        if self.rollout.engine != "hf" and self.sharded:
            raise InvalidValue(
                "rollout",
                f"engine {self.rollout.engine!r} generates with a whole model: it needs engine: replicated "
                f"(not {self.engine!r}); use rollout.engine: hf with a sharded engine.",
            )
        algorithm = algorithms.get_algorithm(self.algorithm)
        self.resolve_algorithm_defaults(algorithm)
        # The ratio's lower bound 1 - clip_range_low must stay above 0, or nothing is clipped below.
        check_range(self, "clip_range_low", 0.0, 1.0, low_open=True)
        if self.adaptive_kl and self.kl_coef == 0:
            raise InvalidValue("kl_coef", "is 0, which adaptive_kl can only multiply: start it above 0.")
        if self.adaptive_kl and self.kl_horizon * 5 <= episodes_per_step:
            # beta *= 1 + e * episodes / horizon with e down to -0.2: at or below 0 it turns negative.
            raise InvalidValue(
                "kl_horizon",
                f"({self.kl_horizon}) must exceed a fifth of the episodes per step ({episodes_per_step}), or "
                "one adaptive KL update can turn the coefficient negative.",
            )
        if self.overlong_buffer is not None and self.overlong_buffer >= self.max_new_tokens:
            raise InvalidValue(
                "overlong_buffer",
                f"({self.overlong_buffer}) must be below max_new_tokens ({self.max_new_tokens}).",
            )
        if (self.batch_size * self.group_size) % self.minibatch_size:
            raise ConfigError(
                f"batch_size x group_size ({self.batch_size} x {self.group_size}) must be "
                f"divisible by minibatch_size ({self.minibatch_size})."
            )
        if (algorithm.needs_groups or self.dynamic_sampling) and self.group_size < 2:
            raise ConfigError(
                f"algorithm {self.algorithm} compares samples of the same prompt: set group_size "
                f">= 2 (got {self.group_size})."
            )
        if self.eval_every and not self.eval_prompts:
            raise ConfigError("eval_every needs eval_prompts: the held-out prompts the snapshots sample.")
        if not self.prompts:
            raise ConfigError("The RL stage needs 'prompts': a data source of {\"prompt\"} rows.")
        if not self.reward_model and not self.reward_functions:
            raise ConfigError("The RL stage needs a reward: set reward_model and/or reward_functions.")
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_is_loss else "k1"
        if self.kl_is_loss and self.kl_estimator == "k1":
            raise ConfigError(
                "kl_estimator k1 cannot be a loss term: the log-ratio of sampled tokens has zero expected "
                "gradient and can be negative, so minimising it drives the policy away from the reference. "
                "Use k3 (or k2) with kl_in_loss, or put the KL in the reward (kl_in_loss: false)."
            )
        if self.shared_value_head and not algorithm.value_model:
            raise ConfigError(
                f"shared_value_head is PPO's (a value head on the policy); algorithm {self.algorithm} has "
                "no value model. Remove the key or set algorithm: ppo."
            )
        if self.shared_value_head and self.value_init is not None:
            raise ConfigError(
                "value_init picks the weights of a separate value model; with shared_value_head: true the "
                "value head reads the policy's trunk and starts at zero. Remove one of the two keys."
            )
        if self.baseline != "batch" and algorithm.advantage != "reinforce_baselines":
            raise InvalidValue(
                "baseline",
                f"picks REINFORCE's baseline; algorithm {self.algorithm} has its own. Remove the key.",
            )
        if self.value_init is None:
            self.value_init = "reward_model" if self.reward_model and not self.shared_value_head else "policy"
        if algorithm.value_model and self.value_init == "reward_model" and not self.reward_model:
            raise ConfigError("value_init: reward_model needs a reward_model; set value_init: policy.")

    def resolve_algorithm_defaults(self, algorithm: registry.Algorithm) -> None:
        """Fill each key left unset (None) from the algorithm's defaults: the saved config says what ran."""
        if self.policy_loss is None:
            self.policy_loss = algorithm.policy_loss
        check_choice(self, "policy_loss", tuple(registry.POLICY_LOSSES))
        if self.loss_aggregation is None:
            self.loss_aggregation = algorithm.aggregation
        check_choice(self, "loss_aggregation", registry.AGGREGATIONS)
        if self.kl_in_loss is None:
            self.kl_in_loss = algorithm.kl_in_loss
        if self.kl_coef is None:
            self.kl_coef = algorithm.kl_coef
        if self.clip_range_low is None:
            self.clip_range_low = algorithm.clip_range_low or self.clip_range
        if self.clip_range_high is None:
            self.clip_range_high = algorithm.clip_range_high or self.clip_range
        if self.overlong_buffer is None and algorithm.overlong_shaping:
            self.overlong_buffer = max(1, self.max_new_tokens // 4)
        if self.mask_truncated is None:
            self.mask_truncated = algorithm.mask_truncated
        if self.dynamic_sampling is None:
            self.dynamic_sampling = algorithm.dynamic_sampling

    @property
    def kl_is_loss(self) -> bool:
        return bool(self.kl_in_loss)


Config = RLStageConfig  # the stage registry's handle (stages/__init__.py)


def check(cfg: RLStageConfig) -> None:
    """Validate the prompts and reward functions up front, before any stage of the run trains."""
    load_rows(cfg.prompts, PROMPT_ONLY, "RL prompts")
    for spec in cfg.reward_functions:
        load_reward_function(spec)
    if cfg.eval_every:
        load_rows(cfg.eval_prompts, PROMPT_ONLY, "RL evaluation prompts")
        if cfg.eval_gold:
            load_reward_function(cfg.eval_gold)


def make_snapshotter(cfg: RLStageConfig, ctx: StageContext, tokenizer, rewards, engine) -> Snapshotter | None:
    if not cfg.eval_every:
        return None
    rows = load_rows(cfg.eval_prompts, PROMPT_ONLY, "RL evaluation prompts")[: cfg.eval_max_prompts]
    prompts = policy_prompts(rows, tokenizer, rewards)
    sampling = {
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "stop_token_ids": stop_token_ids(tokenizer, cfg.stop_token),
        "pad_token_id": tokenizer.pad_token_id,
        "synced": engine.sharded,
    }
    encoded = encode_prompts(tokenizer, prompts, cfg.max_prompt_length, cfg.eval_prompts)
    return Snapshotter(
        prompts,
        encoded,
        cfg.eval_gold,
        rewards,
        tokenizer,
        sampling,
        ctx.work_dir,
        ctx.seed,
        engine.save if cfg.save_snapshot_weights else None,
    )


def check_memory_plan(cfg: RLStageConfig, models, engine, stage: str) -> None:
    """Print the memory plan per process (stages/rl/memory_plan.py); on a GPU, refuse one that cannot fit."""
    shapes = [memory_plan.shape_of("policy", models.policy, True)]
    if models.reference is not None:
        shapes.append(memory_plan.shape_of("reference", models.reference, False))
    if models.value_model is not None and not isinstance(models.value_model, SharedValueHead):
        shapes.append(memory_plan.shape_of("value_model", models.value_model, True))
    for source in models.rewards.sources:
        if isinstance(source.scorer, LearnedRewardModel):
            shapes.append(memory_plan.shape_of("reward_model", source.scorer.model, False))
    world = distributed.world_size()
    setting = memory_plan.Setting(
        world=world,
        sharded=engine.sharded,
        micro_rows=cfg.micro_batch_size or max(1, cfg.minibatch_size // world),
        tokens_per_row=cfg.max_prompt_length + cfg.max_new_tokens,
        weight_bytes=2 if cfg.dtype == "bfloat16" else 4,
        compute_bytes=2 if cfg.mixed_precision == "bf16" else 4,
        lora=cfg.lora.enabled,
    )
    if distributed.is_main():
        log(f"[{stage}] " + memory_plan.render(memory_plan.plan(shapes, setting), world, engine.name))
    if torch.cuda.is_available():
        budget = torch.cuda.mem_get_info()[1] * 0.95  # the rest: CUDA context and the allocator's slack
        problem = memory_plan.refusal(shapes, setting, budget)
        if problem:
            raise UserError(f"Stage '{stage}': {problem}")


TIME_KEYS = ("time/step_s", "time/generate_s", "time/score_s", "time/update_s")


def run_summary(history: list[dict]) -> dict[str, float]:
    """The stage's final metrics on where time went (means over the steps) and on the sampler-trainer
    mismatch (its largest step), from the rows that logged them (a history resumed from an older run may
    have rows without)."""
    summary: dict[str, float] = {}
    for key in (*TIME_KEYS, "generate_tokens_per_s", "generate_share"):
        values = [row[key] for row in history if key in row]
        if values:
            summary[key] = sum(values) / len(values)
    for key in ("mismatch/logprob_max", "mismatch/kl"):
        values = [row[key] for row in history if key in row]
        if values:
            summary[f"{key}_max" if key == "mismatch/kl" else key] = max(values)
    return summary


def measured_by_clock(key: str) -> bool:
    """History entries that depend on the machine's speed, not on the training (left out when two runs are
    compared for equality)."""
    return key == "elapsed_s" or key.startswith("time/") or key in ("generate_tokens_per_s", "generate_share")


def step_timings(seconds: dict[str, float], step_seconds: float, generated_tokens: float) -> dict[str, float]:
    """Where the step's time went, by the main process's clock: generating, scoring (reward sources, then
    the no-grad passes for log-probabilities, values and the reference) and updating; the generated tokens
    per second (all processes' tokens over this process's generation time) and generation's share."""
    return {
        "time/generate_s": seconds["generate"],
        "time/score_s": seconds["score"],
        "time/update_s": seconds["update"],
        "time/step_s": step_seconds,
        "generate_tokens_per_s": generated_tokens / max(seconds["generate"], 1e-9),
        "generate_share": seconds["generate"] / max(step_seconds, 1e-9),
    }


def policy_prompts(rows: list[dict], tokenizer, rewards: RewardMix) -> list[str]:
    """The text the policy continues for each prompt row: a conversation rendered by the chat template with
    its generation prompt, whose messages the reward mix keeps for the reward functions."""
    originals = [row["prompt"] for row in rows]
    rendered = [p if isinstance(p, str) else render_prompt(tokenizer, p) for p in originals]
    rewards.add_conversations(rendered, originals)
    return rendered


def global_row_stats(values: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, float]:
    return {key: algorithms.global_mean(value.float().cpu(), weight) for key, value in values.items()}


def unique_fraction_over_processes(completions: list[str], weight: torch.Tensor) -> float:
    """Distinct completions / completions of the whole batch (every process's rows of weight > 0)."""
    mine = [c for c, w in zip(completions, weight.tolist()) if w > 0]
    everyone = [mine]
    if distributed.active():
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(everyone, mine)
    return diversity.unique_fraction([c for part in everyone for c in part])


def flat_config(cfg: RLStageConfig) -> dict[str, str | int | float | bool]:
    """The config as one level of keys (`lora.r`), values as trackers accept them (others as text)."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in to_dict(cfg).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            name = key if sub is None else f"{key}.{sub}"
            flat[name] = item if isinstance(item, (str, int, float, bool)) else str(item)
    return flat


def update_settings(cfg: RLStageConfig) -> UpdateSettings:
    return UpdateSettings(
        epochs=cfg.ppo_epochs,
        minibatch_size=cfg.minibatch_size,
        micro_batch_size=cfg.micro_batch_size,
        policy_loss=algorithms.get_policy_loss(cfg.policy_loss),
        aggregation=cfg.loss_aggregation,
        clip_low=cfg.clip_range_low,
        clip_high=cfg.clip_range_high,
        max_length=cfg.max_new_tokens,
        value_clip_range=cfg.value_clip_range,
        vf_coef=cfg.vf_coef,
        temperature=cfg.temperature,
        max_grad_norm=cfg.max_grad_norm,
        kl_loss_coef=0.0,
        kl_estimator=cfg.kl_estimator,
        skip_nonfinite=cfg.skip_nonfinite,
    )


def fresh_state(cfg: RLStageConfig, prompts: list[str], seed: int, rewards) -> checkpoint.RLState:
    kl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else FixedKLController(cfg.kl_coef)
    )
    stream = PromptStream(prompts, seed)
    return checkpoint.RLState(
        stream, kl, RunningMeanBaseline(cfg.baseline_momentum), rewards.moments, cfg.batch_size
    )


def check_finite(scores: torch.Tensor, stage: str, step: int, last_checkpoint: str | None) -> None:
    """Stop (on every process alike) before a NaN/inf reward reaches the weights."""
    if not distributed.all_true(bool(torch.isfinite(scores).all())):
        raise UserError(
            f"Stage '{stage}': a reward is NaN/inf at RL step {step}; stopped before updating "
            f"the weights (last good checkpoint: {last_checkpoint or 'none yet'})."
        )


def run(ctx: StageContext) -> StageResult:
    from accelerate import Accelerator

    cfg: RLStageConfig = ctx.config
    set_locations(cfg.report_to, logs_dir(ctx))
    accelerator = Accelerator(log_with=cfg.report_to or None, project_dir=str(logs_dir(ctx)))
    # the resolved config as the run's hyperparameters (flat keys: every tracker takes those)
    accelerator.init_trackers(ctx.name, config=flat_config(cfg))
    if accelerator.is_main_process:
        log_run_files(cfg.report_to, run_files(ctx.run_dir), logs_dir(ctx))
    device = accelerator.device
    autocast = functools.partial(torch.autocast, device.type, torch.bfloat16, cfg.mixed_precision == "bf16")
    prompt_rows = load_rows(cfg.prompts, PROMPT_ONLY, "RL prompts")
    episodes_per_step = cfg.batch_size * cfg.group_size
    steps = max(1, cfg.total_episodes // episodes_per_step)

    # 1. models placed by the engine (replicated, or sharded with FSDP2), optimizer, the algorithm
    tokenizer = load_tokenizer(ctx.inputs["policy"], cfg.trust_remote_code)
    if cfg.chat_template or is_conversational(prompt_rows):
        use_template(tokenizer, cfg.chat_template, ctx.inputs["policy"], f"Stage '{ctx.name}': prompts")
    stop_ids = stop_token_ids(tokenizer, cfg.stop_token)
    models = build_models(cfg, ctx.inputs, tokenizer, device)
    engine = make_engine(
        cfg.engine,
        lambda: build_policy(ctx.inputs["policy"], cfg.lora, cfg.trust_remote_code, cfg.dtype),
        cfg.mixed_precision == "bf16",
    )
    check_memory_plan(cfg, models, engine, ctx.name)
    engine.prepare(models)
    if engine.sharded:
        held, total = parameters_held(models.policy)
        log(f"[{ctx.name}] engine fsdp2: this process holds {held:,} of {total:,} policy parameters")
    prompts = policy_prompts(prompt_rows, tokenizer, models.rewards)
    prompt_ids = dict(zip(prompts, encode_prompts(tokenizer, prompts, cfg.max_prompt_length, cfg.prompts)))
    params = [p for m in models.trained.values() for p in m.parameters() if p.requires_grad]
    optimizer = engine.optimizer(params, cfg.lr, device)
    algorithm, settings = algorithms.get_algorithm(cfg.algorithm), update_settings(cfg)
    settings.sync_gradients, settings.equal_micro_batches = engine.sync_gradients, engine.sharded

    # 2. the run's state: fresh, or restored as one from the newest verified checkpoint of an interrupted run
    state, last_checkpoint = fresh_state(cfg, prompts, ctx.seed, models.rewards), None
    resume = checkpoint.resume_point(ctx.work_dir, ctx.name)
    if resume is not None:
        checkpoint.load(resume, state, models.trained, optimizer, engine.sharded)
        last_checkpoint = str(resume)
    # sharded models sample only with every process taking part: then every process takes the snapshots
    takes_snapshots = distributed.is_main() or engine.sharded
    snapshots = make_snapshotter(cfg, ctx, tokenizer, models.rewards, engine) if takes_snapshots else None
    pad = functools.partial(left_pad, pad_id=tokenizer.pad_token_id, device=device)
    if snapshots is not None:
        snapshots.records = state.snapshots
        if state.step == 0:
            snapshots.take(0, 0, models.policy.eval(), models.reference_context, pad)
    schedule = checkpoint.CheckpointSchedule(cfg.checkpoint_every, cfg.checkpoint_overhead)
    health = HealthMonitor()
    health.check(state.history)  # after a resume: do not repeat warnings already given
    started = time.time() - (state.history[-1]["elapsed_s"] if state.history else 0.0)
    progress = tqdm(
        range(state.step + 1, steps + 1),
        desc=ctx.name,
        initial=state.step,
        total=steps,
        disable=not distributed.is_main(),
    )
    rollout_engine = make_rollout_engine(cfg.rollout.engine, cfg.max_prompt_length)
    for step in progress:
        # 3. rollouts: this process's prompts, group_size samples each (groups never split across processes),
        #    scored by every reward source less the penalties; dynamic sampling may add rounds
        step_started = time.perf_counter()
        sampler = Sampler(cfg, ctx.seed, step, models, prompt_ids, stop_ids, autocast, rollout_engine)
        collected = collect(
            state.stream,
            tokenizer.pad_token_id,
            cfg.batch_size,
            cfg.group_size,
            sampler,
            cfg.dynamic_sampling,
            cfg.max_sampling_rounds,
        )
        rollout, scores, row_weight = collected.rollout, collected.scores, collected.row_weight.to(device)
        check_finite(scores, ctx.name, step, last_checkpoint)
        rollout.response_mask = rollout.response_mask * row_weight[:, None]
        mask = rollout.response_mask

        # 4. the rollout under the policy that sampled it and under the reference: log-probs, values, KL;
        #    how far the sampler's log-probs are from the trainer's, and the importance weights correcting it
        scoring_started = time.perf_counter()
        with autocast():
            old = behaviour(models, rollout, cfg, cfg.micro_batch_size or episodes_per_step)
            greedy_scores, greedy_kl = (
                greedy_baseline(cfg, models, collected.prompts, prompt_ids, stop_ids)
                if cfg.baseline == "greedy"
                else (None, None)
            )
        mismatch = mismatch_metrics(
            distributed.all_sum(mismatch_sums(old.logprobs, rollout.sampler_logprobs, mask)),
            distributed.all_max(float(mismatch_max(old.logprobs, rollout.sampler_logprobs, mask))),
        )
        tis_weights = (
            truncated_is_weights(old.logprobs, rollout.sampler_logprobs, mask, cfg.tis_cap)
            if cfg.tis_cap is not None and not rollout_engine.exact
            else None
        )
        sampler.seconds["score"] += time.perf_counter() - scoring_started

        # 5. advantages: the algorithm's estimator; the KL as a per-token penalty, or (kl_in_loss) a loss term
        kl_coef = state.kl.value  # the coefficient that shapes this step
        scored = algorithms.ScoredBatch(
            scores,
            old.kl,
            0.0 if cfg.kl_is_loss else kl_coef,
            mask,
            rollout.last_index,
            row_weight,
            cfg.group_size,
            values=old.values,
            greedy_scores=greedy_scores,
            greedy_kl=greedy_kl,
            running=state.running,
        )
        result = algorithms.compute(algorithm, scored, cfg)

        # 6. the algorithm's policy loss over minibatches of the global batch, for ppo_epochs
        models.policy.train()
        settings.kl_loss_coef = kl_coef if cfg.kl_is_loss else 0.0
        loss_mask = mask * rollout.ended[:, None] if cfg.mask_truncated else None
        batch = UpdateBatch(
            rollout,
            old.logprobs,
            old.ref_logprobs,
            result.advantages,
            old.values,
            result.returns,
            loss_mask,
            tis_weights,
        )
        local = collected.rows if row_weight.sum() > 0 else slice(0, 0)
        update_started = time.perf_counter()
        with autocast():
            stats = update(
                settings,
                models.policy,
                models.value_model,
                optimizer,
                batch,
                step,
                ctx.name,
                last_checkpoint,
                ctx.seed,
                local,
                episodes_per_step,
            )
        means = global_row_stats(
            {
                "reward": scores,
                "kl": old.kl.sum(1),
                "response_length": mask.sum(1),
                "ended_fraction": rollout.ended.float(),
                **{f"reward/{k}": v for k, v in collected.parts.items() if k != "total"},
            },
            row_weight,
        )
        state.kl.update(means["kl"], episodes_per_step)
        seconds = {**sampler.seconds, "update": time.perf_counter() - update_started}

        # 7. log, snapshot and checkpoint (the main process writes; the others wait)
        completions = tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        row = {
            "step": step,
            "episodes": step * episodes_per_step,
            **means,
            "kl_coef": kl_coef,
            "elapsed_s": time.time() - started,
            "unique_fraction": unique_fraction_over_processes(completions, row_weight),
            **collected.stats,  # dynamic sampling: groups without signal, rounds, groups dropped
            **stats,
            **mismatch,
            **step_timings(
                seconds, time.perf_counter() - step_started, means["response_length"] * episodes_per_step
            ),
        }
        state.step = step
        state.history.append(row)
        accelerator.log(tracker_keys(row), step=step)
        for warning in health.check(state.history):  # each warning once, with the step it began
            log(f"[{ctx.name}] warning: {warning.message}")
        if step % cfg.log_every == 0:
            progress.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")
        if snapshots is not None and (step % cfg.eval_every == 0 or step == steps):
            snap = snapshots.take(
                step, step * episodes_per_step, models.policy.eval(), models.reference_context, pad
            )
            accelerator.log(tracker_keys({f"eval/{k}": v for k, v in snap["rewards"].items()}), step=step)
        # the main process's clock decides, so that every process writes (and waits) at the same steps
        if distributed.all_sum(torch.tensor(float(distributed.is_main() and schedule.due(step, steps)))) > 0:
            folder = checkpoint.checkpoint_folder(ctx.work_dir, step)
            with schedule.writing():
                checkpoint.save(folder, state, models.trained, optimizer, engine.sharded)
                if distributed.is_main():
                    checkpoint.keep_newest(ctx.work_dir, cfg.keep_checkpoints)
                distributed.barrier()
            last_checkpoint = str(folder)

    # 8. save the policy (LoRA merged; the adapter kept beside it), gathered whole if sharded
    engine.save(models.policy, tokenizer, ctx.out_dir)
    if distributed.is_main():
        if snapshots is not None:
            (ctx.out_dir / SNAPSHOTS_FILE).write_text(json.dumps(snapshots.publish(ctx.out_dir), indent=1))
    distributed.barrier()
    history = state.history
    window = max(1, len(history) // 4)
    elapsed = history[-1]["elapsed_s"]
    metrics = {
        "steps": float(steps),
        "episodes": float(steps * episodes_per_step),
        "reward_first": sum(r["reward"] for r in history[:window]) / window,
        "reward_last": sum(r["reward"] for r in history[-window:]) / window,
        "kl_last": history[-1]["kl"],
        "episodes_per_second": steps * episodes_per_step / max(elapsed, 1e-9),
        **run_summary(history),
    }
    accelerator.log({f"final/{key}": value for key, value in metrics.items()}, step=steps)
    accelerator.end_training()
    log(f"[{ctx.name}] {cfg.algorithm}: {metrics['episodes_per_second']:.1f} episodes/s")
    return StageResult(metrics=metrics, history=history)
