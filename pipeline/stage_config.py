"""The pieces every stage's config is made of: the shared blocks (model, LoRA, rollout engine, training
loop), the base `StageConfig`, and the checks a config's `__post_init__` runs on its values. The stages
build their typed configs from these; `pipeline/config.py` reads the pipeline file into them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline import distributed
from pipeline.chat import check_template
from pipeline.config_schema import InvalidValue, suggest
from pipeline.errors import ConfigError


def input_field(default: Any = None, **kwargs: Any) -> Any:
    """A config field naming another stage (by name) or a checkpoint (local path or hub id)."""
    return field(default=default, metadata={"input": True}, **kwargs)


@dataclass
class ModelConfig:
    """A model built from scratch. Ignored when the stage has `init_from`."""

    family: Literal["llama", "gpt2", "qwen2", "bert", "t5"] = "llama"  # decoders; bert: encoder; t5: enc-dec
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    tokenizer: str | None = None  # path or hub id; None trains a BPE tokenizer on the corpus
    vocab_size: int = 512  # of the trained tokenizer
    dropout: float | None = None  # None: the family's default (bert, t5, gpt2: 0.1; llama, qwen2: 0.0)
    # extra special tokens of the trained tokenizer, e.g. the role markers of the stage's chat_template
    special_tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_positive(
            self,
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "vocab_size",
        )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise InvalidValue("dropout", f"({self.dropout}) must be in [0, 1).")
        if self.hidden_size % self.num_heads:
            raise InvalidValue(
                "hidden_size", f"({self.hidden_size}) must be divisible by num_heads ({self.num_heads})."
            )
        head_size = self.hidden_size // self.num_heads
        if self.family in ROTARY_FAMILIES and head_size % 2:
            raise InvalidValue(
                "hidden_size",
                f"({self.hidden_size}) / num_heads ({self.num_heads}) = {head_size} must be even: "
                f"{self.family}'s rotary position embedding turns pairs of dimensions.",
            )


ROTARY_FAMILIES = ("llama", "qwen2")  # positions by rotary embedding: any length, an even head size
LEARNED_POSITION_FAMILIES = ("gpt2", "bert")  # a learned embedding per position: max_position_embeddings


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        check_positive(self, "r", "alpha")
        check_range(self, "dropout", 0, 1)
        if self.target_modules == ["all-linear"]:
            self.target_modules = "all-linear"  # peft expands the shorthand only as a plain string
        modules = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        if "all-linear" in modules and len(modules) > 1:
            raise InvalidValue("target_modules", f"lists 'all-linear' beside module names: {modules}.")
        if not modules or not all(m.strip() for m in modules):
            raise InvalidValue(
                "target_modules",
                "must name the modules to adapt ('all-linear', or a list of names), "
                f"got {self.target_modules!r}.",
            )


ROLLOUT_ENGINES = ("hf", "compiled", "paged")  # stages/rl/generation.py


@dataclass
class RolloutConfig:
    """How responses are generated, in the RL stage and in the evaluation (stages/rl/generation.py)."""

    # hf: our exact loop over the KV cache (the default; 1 and N processes sample alike); compiled: that loop
    # over a static cache with a torch.compile'd decode step; paged: transformers' continuous batching
    # (docs/design.md "Rollout engines", docs/benchmarks.md)
    engine: str = "hf"

    def __post_init__(self) -> None:
        check_choice(self, "engine", ROLLOUT_ENGINES)


@dataclass
class StageConfig:
    """Keys every stage has."""

    kind: str = ""
    seed: int | None = None  # None: the pipeline's seed
    trust_remote_code: bool = False
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb, ...; writes logs/<stage>/
    # bf16 for GPUs, "no" on CPU. Unset: what the `accelerate launch` config asks for, else "no"; set, it
    # must agree with that config (one source of truth: the Trainer and DeepSpeed read the launcher's).
    mixed_precision: Literal["no", "bf16"] | None = None
    # The dtype weights are held (and updated) in. float32 keeps a full-precision master copy whatever the
    # checkpoint's stored dtype, and bf16 compute comes from mixed_precision. bfloat16 halves weight and
    # optimizer memory, but an update below ~1/256 of a weight rounds away (at lr 1e-6 most never move).
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    # Jinja chat template (the text, or the path of a file holding it) given to the stage's tokenizer; it
    # replaces the checkpoint's own. Conversational data needs a template: from here or from the checkpoint.
    chat_template: str | None = None

    def __post_init__(self) -> None:
        check_seed(self)
        check_chat_template(self)
        self.mixed_precision = agreed_precision(self.mixed_precision, distributed.launcher_mixed_precision())

    def longest_sequence(self) -> tuple[int, str] | None:
        """(the most tokens one sequence of this stage has, the keys that set it); None when no key does.
        A stage that cuts its sequences at `max_length` has it; others override this."""
        max_length = getattr(self, "max_length", None)
        return (max_length, "max_length") if isinstance(max_length, int) else None

    def position_limit(self) -> int | None:
        """The positions of the model this stage builds from scratch when they are a learned table (a longer
        sequence has no embedding); None when it builds none or its positions have no such limit."""
        return None


@dataclass
class TrainingConfig(StageConfig):
    """Keys of the stages that train with a Hugging Face Trainer (pretrain, sft, reward)."""

    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16  # the global batch of one optimizer step, whatever the processes and micro-batches
    # rows per forward/backward on each process; gradients of batch_size / (processes x micro_batch_size)
    # micro-batches are accumulated. None: the whole per-process batch at once.
    micro_batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    eval_fraction: float = 0.05  # held out from `data` when `eval_data` is not given
    eval_data: str | None = None
    log_every: int = 10
    checkpoint_every: int | None = None  # optimizer steps between resumable checkpoints
    keep_checkpoints: int = 2  # newest verified checkpoints kept (an older one is the fallback)
    skip_nonfinite: bool = False  # skip an update whose gradients are NaN/inf instead of stopping

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "lr", "batch_size", "epochs", "log_every", "micro_batch_size")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise InvalidValue(
                "micro_batch_size",
                f"({self.micro_batch_size}) must divide batch_size ({self.batch_size}).",
            )
        # the launch is known when the config loads: refuse a split that cannot work before any stage trains
        world = distributed.world_size()
        if self.batch_size % world:
            raise InvalidValue(
                "batch_size",
                f"({self.batch_size}) must be divisible by the number of processes ({world}): it is the "
                "global batch, split evenly.",
            )
        share = self.batch_size // world
        if self.micro_batch_size is not None and share % self.micro_batch_size:
            raise InvalidValue(
                "micro_batch_size",
                f"({self.micro_batch_size}) must divide each process's share of batch_size "
                f"({self.batch_size} / {world} processes = {share}).",
            )
        if self.max_steps != -1 and self.max_steps <= 0:
            raise InvalidValue("max_steps", f"must be -1 (train for `epochs`) or > 0, got {self.max_steps}.")
        check_at_least(self, 0, "weight_decay")
        check_range(self, "warmup_ratio", 0, 1)
        check_range(self, "eval_fraction", 0, 1)
        check_positive_if_set(self, "checkpoint_every", "no resumable checkpoints")
        check_at_least(self, 1, "keep_checkpoints")
        check_choice(self, "lr_scheduler", LR_SCHEDULERS)
        check_trackers(self, (*trainer_trackers(), "all", "none"))


# The Trainer's schedulers that need no settings beyond these keys (the others want scheduler kwargs or
# an evaluation strategy, which the stages do not set).
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


def check_trackers(cfg: Any, known: tuple[str, ...]) -> None:
    """`report_to` names only trackers in `known`; `all` and `none` stand alone (the libraries special-case
    only the one-item lists)."""
    for name in cfg.report_to:
        if name not in known:
            raise InvalidValue(
                "report_to",
                f"names an unknown tracker {name!r}.{suggest(name, list(known))} Known: {', '.join(known)}.",
            )
    if len(cfg.report_to) > 1 and {"all", "none"} & set(cfg.report_to):
        raise InvalidValue("report_to", f"lists 'all' or 'none' beside other trackers: {cfg.report_to}.")


def trainer_trackers() -> tuple[str, ...]:
    """The tracker names transformers' Trainer takes in `report_to` (besides all and none)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return tuple(INTEGRATION_TO_CALLBACK)


def agreed_precision(stage: str | None, launcher: str | None) -> str:
    """The one mixed precision a stage trains in: its own `mixed_precision` key and the precision of the
    `accelerate launch` config the run was started with (None without one) must not disagree, or the
    Trainer (and DeepSpeed's config) would follow one and the stage's own code the other."""
    if launcher not in (None, "no", "bf16"):
        raise InvalidValue(
            "mixed_precision",
            f"cannot follow the accelerate config this run was launched with, which asks for {launcher!r} "
            "(ACCELERATE_MIXED_PRECISION): the stages train in 'bf16' or 'no'; change that config's "
            "mixed_precision.",
        )
    if stage is None:
        return launcher or "no"
    if launcher == "bf16" and stage != "bf16":
        raise InvalidValue(
            "mixed_precision",
            f"is {stage!r}, but the accelerate config this run was launched with asks for 'bf16' "
            "(ACCELERATE_MIXED_PRECISION): make them agree, or leave the stage's key out to follow the "
            "accelerate config.",
        )
    return stage  # a launcher's "no" is also accelerate's default when its config names no precision


def check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise InvalidValue(name, f"must be > 0, got {value}.")


def check_positive_if_set(cfg: Any, name: str, when_unset: str) -> None:
    """A key whose null means something (`when_unset`); 0 does not mean it too."""
    value = getattr(cfg, name)
    if value is not None and value <= 0:
        raise InvalidValue(name, f"must be > 0, or null for {when_unset}; got {value}.")


def check_at_least(cfg: Any, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise InvalidValue(name, f"must be >= {minimum}, got {value}.")


def check_range(
    cfg: Any, name: str, low: float, high: float, low_open: bool = False, high_open: bool = True
) -> None:
    """`value` in [low, high) by default; `low_open` / `high_open` leave out that end."""
    value = getattr(cfg, name)
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise InvalidValue(name, f"must be in {interval}, got {value}.")


def check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise InvalidValue(
            name, f"must be one of {', '.join(choices)}, got {value!r}.{suggest(str(value), list(choices))}"
        )


def check_seed(cfg: Any, name: str = "seed") -> None:
    """Seeds go to numpy (through transformers' set_seed), which takes 0 .. 2**32 - 1."""
    value = getattr(cfg, name)
    if value is not None and not 0 <= value < 2**32:
        raise InvalidValue(name, f"must be in [0, 2**32 - 1], got {value}.")


def check_chat_template(cfg: Any) -> None:
    if cfg.chat_template is not None:
        try:
            check_template(cfg.chat_template)
        except ConfigError as exc:
            raise InvalidValue("chat_template", str(exc).removeprefix("chat_template ")) from exc


def check_function_spec(name: str, spec: str | None) -> None:
    """A `module:function` reference (a reward function or gold scorer), checked for its form at load; that
    the module imports and has the function is checked before anything trains."""
    module, sep, function = (spec or "").partition(":")
    if spec is not None and not (sep and module.strip() and function.strip()):
        raise InvalidValue(name, f"must be written as module:function, got {spec!r}.")


def check_source(cfg: Any, name: str) -> None:
    """An input field that must be set: a stage name, a model folder or a hub id."""
    if not (getattr(cfg, name) or "").strip():
        raise InvalidValue(name, "must name a stage, a model folder or a hub id; it is empty.")
