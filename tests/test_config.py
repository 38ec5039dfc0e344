"""The config surface refuses bad keys, types and values with a message naming the dotted key; the stage
graph refuses cycles and unknown inputs. Configs are plain dicts: nothing here trains."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.runner import build_graph, topological_order
from stages import known_kinds

BASE = {
    "name": "unit",
    "stages": {
        "pretrain": {"data": "corpus.jsonl"},
        "sft": {"init_from": "pretrain", "data": "sft.jsonl"},
        "reward": {"init_from": "sft", "data": "prefs.jsonl"},
        "ppo": {"policy": "sft", "reward_model": "reward", "prompts": "prompts.jsonl"},
    },
}


def load(*overrides: str, data: dict | None = None):
    return load_config(None, list(overrides), data=copy.deepcopy(BASE) if data is None else data)


def refused(*overrides: str, data: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(*overrides, data=data)
    return str(info.value)


# ---------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    "override, key, suggestion, a_valid_key",
    [
        ("nmae=x", "'nmae'", "Did you mean 'name'?", "stages"),
        ("stages.sft.epoch=3", "'stages.sft.epoch'", "Did you mean 'epochs'?", "max_steps"),
        ("stages.sft.lora.rr=4", "'stages.sft.lora.rr'", "Did you mean 'r'?", "target_modules"),
        (
            "stages.pretrain.model.hiden_size=32",
            "'stages.pretrain.model.hiden_size'",
            "'hidden_size'",
            "family",
        ),
    ],
    ids=["top-level", "in-stage", "nested-lora", "nested-model"],
)
def test_unknown_key_names_full_path_suggests_and_lists_valid_keys(override, key, suggestion, a_valid_key):
    message = refused(override)
    assert f"Unknown config key {key}." in message
    assert suggestion in message
    assert "Valid keys here:" in message and a_valid_key in message


def test_unknown_key_with_no_close_match_still_lists_valid_keys():
    message = refused("stages.sft.zzzzzz=1")
    assert "Did you mean" not in message
    assert "Valid keys here: batch_size, chat_template, checkpoint_every, data, " in message
    assert "epochs" in message


# ---------------------------------------------------------------- types
@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.sft.epochs=many", "Config key 'stages.sft.epochs' must be a number, got a string 'many'."),
        (
            "stages.sft.batch_size=true",
            "Config key 'stages.sft.batch_size' must be an integer, got a boolean",
        ),
        ("stages.sft.batch_size=2.5", "Config key 'stages.sft.batch_size' must be an integer, got float 2.5"),
        ("stages.sft.data=[a, b]", "Config key 'stages.sft.data' must be a string, got a list ['a', 'b']"),
        (
            "stages.sft.lora.enabled=1",
            "Config key 'stages.sft.lora.enabled' must be true or false, got int 1",
        ),
        ("stages.sft.lora=8", "Config key 'stages.sft.lora' must be a mapping of keys to values, got int"),
        (
            "stages.pretrain.model.family=lama",
            "must be one of 'llama', 'gpt2', 'qwen2', 'bert', 't5', got 'lama'",
        ),
        ("stages=[pretrain]", "Config key 'stages' must be a mapping, got a list"),
    ],
    ids=[
        "str-for-float",
        "bool-for-int",
        "float-for-int",
        "list-for-str",
        "int-for-bool",
        "int-for-section",
        "bad-literal",
        "list-for-stages",
    ],
)
def test_wrong_type_names_key_and_expected_type(override, expected):
    assert expected in refused(override)


def test_literal_typo_gets_a_suggestion():
    assert "Did you mean 'llama'?" in refused("stages.pretrain.model.family=lama")


@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("3.0e-3", 3e-3), ("1", 1.0), (".5", 0.5)])
def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path, text, value):
    # PyYAML (YAML 1.1) reads `3e-4` as the string '3e-4'; the config accepts it as the number.
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"stages:\n  sft:\n    init_from: org/model\n    data: x.jsonl\n    lr: {text}\n")
    lr = load_config(config_file).stages["sft"].lr
    assert isinstance(lr, float) and lr == pytest.approx(value)


def test_none_for_optional_and_int_for_float_are_accepted():
    config = load(
        "stages.sft.eval_data=null", "stages.sft.epochs=3", "stages.reward.center_rewards_coefficient=null"
    )
    assert config.stages["sft"].eval_data is None
    assert config.stages["sft"].epochs == 3.0 and isinstance(config.stages["sft"].epochs, float)
    assert config.stages["reward"].center_rewards_coefficient is None


# ---------------------------------------------------------------- impossible values
@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.sft.lr=-1e-3", "Config key 'stages.sft.lr' must be > 0, got -0.001."),
        ("stages.reward.batch_size=0", "Config key 'stages.reward.batch_size' must be > 0, got 0."),
        (
            "stages.ppo.batch_size=10",
            "Config section 'stages.ppo': batch_size x group_size (10 x 1) must be divisible by "
            "minibatch_size (16).",
        ),
        ("stages.ppo.temperature=0", "Config key 'stages.ppo.temperature' must be > 0, got 0.0."),
        ("stages.sft.eval_fraction=1.5", "Config key 'stages.sft.eval_fraction' must be in [0, 1), got 1.5."),
        (
            "stages.pretrain.model.num_heads=3",
            "Config key 'stages.pretrain.model.hidden_size' (64) must be divisible by num_heads (3).",
        ),
        (
            "stages.pretrain.objective=mlm",
            "'stages.pretrain.objective' is 'mlm', which trains a model of family bert",
        ),
    ],
    ids=[
        "negative-lr",
        "zero-batch",
        "ppo-minibatch",
        "zero-temperature",
        "eval-fraction-1.5",
        "heads-do-not-divide",
        "objective",
    ],
)
def test_impossible_value_names_the_key(override, expected):
    assert expected in refused(override)


# Every key a stage would only have refused while building its objects (or never): refused at load time,
# naming the full key, the bad value and what is expected. (overrides, words the message must contain)
PRETRAIN_MLM = ("stages.pretrain.objective=mlm", "stages.pretrain.model.family=bert")
PRETRAIN_T5 = ("stages.pretrain.objective=seq2seq", "stages.pretrain.model.family=t5")
UP_FRONT = {
    # ModelConfig
    "model-num-layers": (
        ["stages.pretrain.model.num_layers=0"],
        "Config key 'stages.pretrain.model.num_layers' must be > 0, got 0.",
    ),
    "model-num-heads-zero": (
        ["stages.pretrain.model.num_heads=0"],
        "Config key 'stages.pretrain.model.num_heads' must be > 0, got 0.",
    ),
    "model-hidden-size": (
        ["stages.pretrain.model.hidden_size=-64"],
        "Config key 'stages.pretrain.model.hidden_size' must be > 0, got -64.",
    ),
    "model-intermediate-size": (
        ["stages.pretrain.model.intermediate_size=0"],
        "Config key 'stages.pretrain.model.intermediate_size' must be > 0, got 0.",
    ),
    "model-max-position-embeddings": (
        ["stages.pretrain.model.max_position_embeddings=0"],
        "Config key 'stages.pretrain.model.max_position_embeddings' must be > 0, got 0.",
    ),
    "model-vocab-size": (
        ["stages.pretrain.model.vocab_size=0"],
        "Config key 'stages.pretrain.model.vocab_size' must be > 0, got 0.",
    ),
    "model-odd-rotary-head": (
        ["stages.pretrain.model.hidden_size=60"],
        "Config key 'stages.pretrain.model.hidden_size' (60) / num_heads (4) = 15 must be even",
    ),
    # LoraConfig
    "lora-r": (["stages.sft.lora.r=0"], "Config key 'stages.sft.lora.r' must be > 0, got 0."),
    "lora-alpha": (["stages.sft.lora.alpha=-16"], "Config key 'stages.sft.lora.alpha' must be > 0, got -16."),
    "lora-dropout": (
        ["stages.reward.lora.dropout=1.0"],
        "Config key 'stages.reward.lora.dropout' must be in [0, 1), got 1.0.",
    ),
    "lora-target-modules-empty-list": (
        ["stages.sft.lora.target_modules=[]"],
        "Config key 'stages.sft.lora.target_modules' must name the modules to adapt",
    ),
    "lora-target-modules-empty-string": (
        ["stages.sft.lora.target_modules="],
        "Config key 'stages.sft.lora.target_modules' must name the modules to adapt",
    ),
    # StageConfig
    "stage-seed-negative": (
        ["stages.sft.seed=-1"],
        "Config key 'stages.sft.seed' must be in [0, 2**32 - 1], got -1.",
    ),
    "stage-seed-too-large": (
        ["stages.reward.seed=4294967296"],
        "Config key 'stages.reward.seed' must be in [0, 2**32 - 1], got 4294967296.",
    ),
    # TrainingConfig
    "weight-decay": (
        ["stages.sft.weight_decay=-0.01"],
        "Config key 'stages.sft.weight_decay' must be >= 0, got -0.01.",
    ),
    "warmup-ratio": (
        ["stages.sft.warmup_ratio=1.0"],
        "Config key 'stages.sft.warmup_ratio' must be in [0, 1), got 1.0.",
    ),
    "max-steps-zero": (
        ["stages.pretrain.max_steps=0"],
        "Config key 'stages.pretrain.max_steps' must be -1 (train for `epochs`) or > 0, got 0.",
    ),
    "max-steps-negative": (
        ["stages.sft.max_steps=-5"],
        "Config key 'stages.sft.max_steps' must be -1 (train for `epochs`) or > 0, got -5.",
    ),
    "log-every": (["stages.reward.log_every=0"], "Config key 'stages.reward.log_every' must be > 0, got 0."),
    "micro-batch-divides": (
        ["stages.sft.micro_batch_size=5"],
        "Config key 'stages.sft.micro_batch_size' (5) must divide batch_size (16).",
    ),
    "rl-micro-batch": (
        ["stages.ppo.micro_batch_size=0"],
        "Config key 'stages.ppo.micro_batch_size' must be > 0, got 0.",
    ),
    "rl-kl-target": (["stages.ppo.kl_target=-1"], "Config key 'stages.ppo.kl_target' must be > 0, got -1.0."),
    "rl-baseline-momentum": (
        ["stages.ppo.baseline_momentum=2"],
        "Config key 'stages.ppo.baseline_momentum' must be in [0, 1), got 2.0.",
    ),
    "rl-algorithm": (
        ["stages.ppo.algorithm=grpoo"],
        "Config key 'stages.ppo.algorithm' must be one of",
    ),
    "checkpoint-every": (
        ["stages.sft.checkpoint_every=0"],
        "Config key 'stages.sft.checkpoint_every' must be > 0, or null for no resumable checkpoints; got 0.",
    ),
    "keep-checkpoints": (
        ["stages.sft.keep_checkpoints=0"],
        "Config key 'stages.sft.keep_checkpoints' must be >= 1, got 0.",
    ),
    "lr-scheduler-typo": (
        ["stages.sft.lr_scheduler=cosin"],
        "Config key 'stages.sft.lr_scheduler' must be one of linear, cosine,",
    ),
    "lr-scheduler-needs-evaluation": (
        ["stages.sft.lr_scheduler=reduce_lr_on_plateau"],
        "Config key 'stages.sft.lr_scheduler' must be one of",
    ),
    "report-to": (
        ["stages.pretrain.report_to=[tensorbord]"],
        "Config key 'stages.pretrain.report_to' names an unknown tracker 'tensorbord'. "
        "Did you mean 'tensorboard'?",
    ),
    # sft, reward, dpo
    "sft-max-length": (["stages.sft.max_length=0"], "Config key 'stages.sft.max_length' must be > 0, got 0."),
    "sft-init-from": (
        ["stages.sft.init_from="],
        "Config key 'stages.sft.init_from' must name a stage, a model folder or a hub id",
    ),
    "reward-init-from": (
        ["stages.reward.init_from="],
        "Config key 'stages.reward.init_from' must name a stage, a model folder or a hub id",
    ),
    "reward-max-length": (
        ["stages.reward.max_length=-1"],
        "Config key 'stages.reward.max_length' must be > 0, got -1.",
    ),
    "reward-center-rewards": (
        ["stages.reward.center_rewards_coefficient=-0.01"],
        "Config key 'stages.reward.center_rewards_coefficient' must be >= 0, got -0.01.",
    ),
    "dpo-beta": (["stages.dpo.beta=0"], "Config key 'stages.dpo.beta' must be > 0, got 0.0."),
    "dpo-max-length": (["stages.dpo.max_length=0"], "Config key 'stages.dpo.max_length' must be > 0, got 0."),
    "dpo-init-from": (
        ["stages.dpo.init_from="],
        "Config key 'stages.dpo.init_from' must name a stage, a model folder or a hub id",
    ),
    "dpo-loss-type-typo": (
        ["stages.dpo.loss_type=sigmod"],
        "Config key 'stages.dpo.loss_type' must be one of sigmoid, hinge,",
    ),
    "dpo-loss-type-needs-label-smoothing": (
        ["stages.dpo.loss_type=exo_pair"],
        "got 'exo_pair'",
    ),
    # pretrain and its objectives
    "clm-block-size": (
        ["stages.pretrain.block_size=1"],
        "Config key 'stages.pretrain.block_size' must be >= 2 for objective clm, got 1.",
    ),
    "mlm-nsp-block-size": (
        [*PRETRAIN_MLM, "stages.pretrain.nsp=true", "stages.pretrain.block_size=4"],
        "Config key 'stages.pretrain.block_size' must be >= 5 for objective mlm with nsp, got 4.",
    ),
    "block-size-beyond-positions": (
        [*PRETRAIN_MLM, "stages.pretrain.block_size=256"],
        "Config key 'stages.pretrain.block_size' (256) must be <= model.max_position_embeddings (128)",
    ),
    "noise-density": (
        [*PRETRAIN_T5, "stages.pretrain.noise_density=0"],
        "Config key 'stages.pretrain.noise_density' must be in (0, 1), got 0.0.",
    ),
    "mean-span-length": (
        [*PRETRAIN_T5, "stages.pretrain.mean_span_length=0.5"],
        "Config key 'stages.pretrain.mean_span_length' must be >= 1, got 0.5.",
    ),
    "mlm-probability-zero": (
        [*PRETRAIN_MLM, "stages.pretrain.masking.probability=0"],
        "Config key 'stages.pretrain.masking.probability' must be in (0, 1], got 0.0.",
    ),
    # task
    "task-max-length": (
        ["stages.task.max_length=0"],
        "Config key 'stages.task.max_length' must be > 0, got 0.",
    ),
    "task-max-new-tokens": (
        ["stages.task.max_new_tokens=0"],
        "Config key 'stages.task.max_new_tokens' must be > 0, got 0.",
    ),
    "task-max-length-beyond-positions": (
        ["stages.task.max_length=512"],
        "Config key 'stages.task.max_length' (512) must be <= model.max_position_embeddings (128)",
    ),
    # evaluation
    "eval-confidence-one": (
        ["evaluation.confidence=1"],
        "Config key 'evaluation.confidence' must be in (0, 1), got 1.0.",
    ),
    "eval-confidence-zero": (
        ["evaluation.confidence=0"],
        "Config key 'evaluation.confidence' must be in (0, 1), got 0.0.",
    ),
    "eval-bootstrap-resamples": (
        ["evaluation.bootstrap_resamples=0"],
        "Config key 'evaluation.bootstrap_resamples' must be > 0, got 0.",
    ),
    "eval-max-prompts": (
        ["evaluation.max_prompts=0"],
        "Config key 'evaluation.max_prompts' must be > 0, or null for all prompts; got 0.",
    ),
    "eval-n-examples": (
        ["evaluation.n_examples=-1"],
        "Config key 'evaluation.n_examples' must be >= 0, got -1.",
    ),
    "eval-seed": (["evaluation.seed=-3"], "Config key 'evaluation.seed' must be in [0, 2**32 - 1], got -3."),
    "eval-baseline-empty": (
        ["evaluation.baseline="],
        "Config key 'evaluation.baseline' must name a stage, a model folder or a hub id",
    ),
    "eval-policy-source-empty": (
        ["evaluation.policies.extra="],
        "Config key 'evaluation.policies.extra' must name a stage, a model folder or a hub id.",
    ),
    # pipeline
    "threads": (["threads=0"], "Config key 'threads' must be > 0, or null for all cores; got 0."),
    "pipeline-seed": (["seed=-1"], "Config key 'seed' must be in [0, 2**32 - 1], got -1."),
    "name-empty": (["name="], "Config key 'name' must not be empty"),
}


@pytest.mark.parametrize("overrides, expected", list(UP_FRONT.values()), ids=list(UP_FRONT))
def test_value_a_stage_would_refuse_is_refused_at_load_time(overrides, expected):
    assert expected in refused(*overrides)


def test_suggestion_for_a_mistyped_choice():
    assert "Did you mean 'cosine'?" in refused("stages.sft.lr_scheduler=cosin")
    assert "Did you mean 'sigmoid'?" in refused("stages.dpo.loss_type=sigmod")


def test_the_edges_of_each_range_a_user_may_set_are_accepted():
    config = load(
        "seed=0",
        "threads=null",
        "stages.sft.max_steps=-1",
        "stages.sft.warmup_ratio=0",
        "stages.sft.weight_decay=0",
        "stages.sft.keep_checkpoints=1",
        "stages.sft.checkpoint_every=null",
        "stages.sft.seed=4294967295",
        "stages.sft.lr_scheduler=cosine",
        "stages.sft.report_to=[tensorboard]",
        "stages.sft.lora.dropout=0",
        "stages.sft.lora.target_modules=[q_proj]",
        "stages.reward.center_rewards_coefficient=0",
        "stages.pretrain.block_size=2",
        "stages.pretrain.model.family=gpt2",
        "stages.pretrain.model.hidden_size=60",  # an odd head size is fine without rotary embeddings
        "stages.dpo.loss_type=ipo",
        "stages.task.max_length=128",
        "evaluation.confidence=0.9",
        "evaluation.max_prompts=null",
        "evaluation.n_examples=0",
    )
    assert config.stages["sft"].seed == 4294967295 and config.stages["dpo"].loss_type == "ipo"
    # a model taken from a checkpoint is not held to the `model` block's position limit
    assert (
        load("stages.task.max_length=512", "stages.task.init_from=org/bert").stages["task"].max_length == 512
    )


def test_a_bad_value_stops_rlhf_run_before_anything_trains(tmp_path: Path, capsys):
    import yaml

    from pipeline.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "document {i} is short"}}\n' for i in range(20)))
    stages = {
        "pretrain": {"data": str(corpus), "max_steps": 1, "batch_size": 4, "warmup_ratio": 1.5},
        "sft": {"init_from": "pretrain", "data": str(corpus)},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "bad", "stages": stages}))
    run_dir = tmp_path / "run"
    assert main(["run", str(tmp_path / "c.yaml"), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "error: Config key 'stages.pretrain.warmup_ratio' must be in [0, 1), got 1.5." in err
    assert "Traceback" not in err
    assert not (run_dir / "pretrain").exists() and not (run_dir / "manifest.json").exists()


def test_evaluation_value_names_its_section():
    data = copy.deepcopy(BASE)
    data["evaluation"] = {"prompts": "p.jsonl", "samples_per_prompt": 0}
    assert "Config key 'evaluation.samples_per_prompt' must be > 0, got 0." in refused(data=data)


# ---------------------------------------------------------------- stage kinds
def test_unknown_stage_kind_is_refused_with_a_suggestion():
    message = refused("stages.sft.kind=sfft")
    assert "Stage 'sft' has unknown kind 'sfft'. Did you mean 'sft'?" in message
    assert f"Known kinds: {', '.join(known_kinds())}." in message


def test_stage_kind_defaults_to_its_name_and_a_named_stage_needs_a_kind():
    # `ppo` is an older name of the rl stage: the loaded config holds the kind itself.
    assert [cfg.kind for cfg in load().stages.values()] == ["pretrain", "sft", "reward", "rl"]
    block = {"init_from": "org/model", "data": "x.jsonl"}
    assert "Stage 'policy' has unknown kind 'policy'." in refused(data={"stages": {"policy": block}})
    config = load(data={"stages": {"policy": {"kind": "sft", **block}}})
    assert config.stages["policy"].kind == "sft"


def test_a_config_without_stages_is_refused():
    assert "The config has no stages" in refused(data={"name": "x", "stages": {}})
    assert "Config key 'stages.sft' must be a mapping" in refused(data={"stages": {"sft": None}})


# ---------------------------------------------------------------- overrides
def test_override_changes_the_value_and_parses_yaml():
    config = load("stages.ppo.lr=1e-4", "stages.sft.lora.target_modules=[q_proj, v_proj]", "name=other")
    assert config.stages["ppo"].lr == pytest.approx(1e-4)
    assert config.stages["sft"].lora.target_modules == ["q_proj", "v_proj"]
    assert config.pipeline.name == "other"
    assert load().stages["ppo"].lr == pytest.approx(3e-4)  # the default, untouched by the override above


def test_override_can_add_a_valid_key_to_a_stage():
    assert load("stages.sft.max_steps=7").stages["sft"].max_steps == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.ppo.lr", "Override 'stages.ppo.lr' must look like key.path=value."),
        ("=3", "Override '=3' has an empty key path."),
        ("..=3", "Override '..=3' has an empty key path."),
        ("stages.sft.lr=[1", "Override 'stages.sft.lr=[1': the value is not valid YAML (expected ',' or ']'"),
        ("stages.sft.lr=", "Config key 'stages.sft.lr' must be a number, got a string ''."),
    ],
    ids=["no-equals", "empty-key", "only-dots", "bad-yaml", "empty-value"],
)
def test_malformed_override_is_refused(override, expected):
    assert expected in refused(override)


def test_bad_yaml_override_is_one_line():
    assert "\n" not in refused("stages.sft.lr=[1")


def test_overriding_a_value_as_a_section_is_refused():
    assert "Override 'name.x=1': 'name' is a value, not a section." in refused("name.x=1")
    assert "'stages.sft.data' is a value, not a section" in refused("stages.sft.data.path=x.jsonl")


def test_override_creating_an_unknown_key_is_refused_with_a_suggestion():
    message = refused("stages.ppo.kl_coeff=0.2")
    assert "Unknown config key 'stages.ppo.kl_coeff'. Did you mean 'kl_coef'?" in message
    message = refused("stages.sfft.data=x.jsonl")  # a new stage: its kind defaults to its name
    assert "Stage 'sfft' has unknown kind 'sfft'. Did you mean 'sft'?" in message


# ---------------------------------------------------------------- config files
def test_config_file_problems(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must contain a mapping with a 'stages' section"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("stages:\n  sft:\n    data: x\n   lr: 1\n")
    with pytest.raises(
        ConfigError, match=r"is not valid YAML: line 4, column 4: expected <block end>"
    ) as info:
        load_config(tmp_path / "broken.yaml")
    assert "\n" not in str(info.value)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(bad byte at offset 9\)"):
        load_config(tmp_path / "latin1.yaml")


# ---------------------------------------------------------------- the stage graph
def graph_order(*overrides: str, data: dict | None = None) -> list[str]:
    return topological_order(build_graph(load(*overrides, data=data)))


def test_order_follows_inputs_not_file_order():
    data = {
        "stages": {
            "ppo": {"policy": "sft", "reward_model": "reward", "prompts": "p.jsonl"},
            "reward": {"init_from": "sft", "data": "prefs.jsonl"},
            "sft": {"init_from": "pretrain", "data": "sft.jsonl"},
            "pretrain": {"data": "corpus.jsonl"},
        }
    }
    assert graph_order(data=data) == ["pretrain", "sft", "reward", "ppo"]
    assert graph_order() == ["pretrain", "sft", "reward", "ppo"]


def test_cycle_is_refused_naming_the_stages():
    with pytest.raises(ConfigError) as info:
        graph_order("stages.sft.init_from=reward")  # reward.init_from is sft
    message = str(info.value)
    assert "The stages form a cycle through their inputs" in message
    assert "sft <- reward" in message and "reward <- sft" in message
    assert "ppo" not in message  # blocked by the cycle, not part of it


def test_missing_stage_input_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        graph_order("stages.reward.init_from=sfft")
    message = str(info.value)
    assert "'init_from' of stage 'reward' is 'sfft', which is not a stage of this pipeline" in message
    assert "Did you mean 'sft'?" in message


@pytest.mark.parametrize("source", ["org/tiny-model", "hf:gpt2"], ids=["org-name", "hf-prefix"])
def test_hub_id_input_is_accepted_and_is_not_a_dependency(source):
    nodes = build_graph(load(f"stages.sft.init_from={source}"))
    assert nodes["sft"].inputs == {"init_from": source}
    assert nodes["sft"].depends_on == []
    assert topological_order(nodes)[0] in ("pretrain", "sft")


def test_existing_path_input_is_accepted(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    nodes = build_graph(load(f"stages.sft.init_from={model}"))
    assert nodes["sft"].inputs == {"init_from": str(model)} and nodes["sft"].depends_on == []


@pytest.mark.parametrize(
    "block, message",
    [
        ({"batch_size": 16}, "'stages.sft.batch_size' (16) must be divisible by the number of processes (3)"),
        (
            {"batch_size": 12, "micro_batch_size": 3},
            "(3) must divide each process's share of batch_size (12 / 3 processes = 4)",
        ),
    ],
)
def test_a_batch_the_launch_cannot_split_is_refused_at_config_load(monkeypatch, block, message):
    from pipeline.config import load_config

    monkeypatch.setenv("WORLD_SIZE", "3")
    sft = {"kind": "sft", "init_from": "x", "data": "demo:reviews/sft", **block}
    with pytest.raises(ConfigError) as caught:
        load_config(None, data={"stages": {"sft": sft}})
    assert message in str(caught.value)


# ---------------------------------------------------------------- one source of precision
@pytest.mark.parametrize(
    "launcher, stage_key, trained_in",
    [
        (None, None, "no"),  # plain `rlhf run`: CPU default
        (None, "bf16", "bf16"),
        ("bf16", None, "bf16"),  # an accelerate config's bf16 is followed by a stage that names none
        ("bf16", "bf16", "bf16"),
        ("no", "bf16", "bf16"),  # "no" is also accelerate launch's default when its config names none
    ],
)
def test_each_stage_trains_in_one_precision_agreed_with_the_launcher(
    monkeypatch, launcher, stage_key, trained_in
):
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    overrides = [f"stages.{name}.mixed_precision={stage_key}" for name in BASE["stages"]] if stage_key else []
    config = load(*overrides)
    assert {stage.mixed_precision for stage in config.stages.values()} == {trained_in}


def test_a_stage_precision_that_contradicts_the_accelerate_config_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    message = refused("stages.sft.mixed_precision=no")
    assert "'stages.sft.mixed_precision' is 'no'" in message
    assert "asks for 'bf16'" in message and "leave the stage's key out" in message


def test_an_accelerate_precision_the_stages_cannot_train_in_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    message = refused()
    assert "asks for 'fp16'" in message and "'bf16' or 'no'" in message


def test_every_stage_kind_is_a_module_with_a_typed_config_named_for_it_and_a_run():
    import dataclasses
    import inspect

    from pipeline.stage_config import StageConfig
    from stages import stage_module

    for kind in known_kinds():
        module = stage_module(kind)
        assert dataclasses.is_dataclass(module.Config) and issubclass(module.Config, StageConfig), kind
        assert module.Config.__name__.endswith("StageConfig") and module.Config.__name__ != "StageConfig", (
            kind
        )
        assert list(inspect.signature(module.run).parameters) == ["ctx"], kind


# ---------------------------------------------------------------- values refused at load, not at build
@pytest.mark.parametrize(
    "override, expected",
    [
        ("stages.sft.lr=.nan", "Config key 'stages.sft.lr' must be a finite number, got nan."),
        ("stages.ppo.kl_coef=.inf", "Config key 'stages.ppo.kl_coef' must be a finite number, got inf."),
        ("evaluation.health.kl_max=.nan", "'evaluation.health.kl_max' must be a finite number"),
        ("stages.sft.report_to=[none, tensorboard]", "lists 'all' or 'none' beside other trackers"),
        ("stages.ppo.report_to=[tensorbord]", "unknown tracker 'tensorbord'. Did you mean 'tensorboard'?"),
        ("stages.ppo.policy=' '", "'stages.ppo.policy' must name a stage, a model folder or a hub id"),
        ("stages.ppo.missing_eos_penalty=-1", "'stages.ppo.missing_eos_penalty' must be >= 0.0"),
        (
            "stages.ppo.total_episodes=10",
            "(10) is less than one step's batch_size x group_size (64 x 1 = 64)",
        ),
        ("stages.ppo.clip_range=1.5", "'stages.ppo.clip_range_low'"),
        ("stages.ppo.adaptive_kl=true|stages.ppo.kl_coef=0", "is 0, which adaptive_kl can only multiply"),
        (
            "stages.ppo.adaptive_kl=true|stages.ppo.kl_horizon=10",
            "must exceed a fifth of the episodes per step",
        ),
        ("stages.ppo.reward_functions={nocolon: 1.0}", "must be written as module:function, got 'nocolon'"),
        ("stages.sft.lora.target_modules=[all-linear, q_proj]", "lists 'all-linear' beside module names"),
        ("evaluation.candidate=sft", "'evaluation.candidate' is the baseline ('sft')"),
        ("evaluation.gold=reward_models.gold", "'evaluation.gold' must be written as module:function"),
    ],
)
def test_a_value_that_would_fail_later_is_refused_when_the_config_loads(override, expected):
    overrides = override.split("|")
    if overrides[0].startswith("evaluation"):
        overrides = ["evaluation.prompts=p.jsonl", *overrides]
    assert expected in refused(*overrides)


def test_all_linear_in_a_list_becomes_the_shorthand_peft_expands():
    assert (
        load("stages.sft.lora.target_modules=[all-linear]").stages["sft"].lora.target_modules == "all-linear"
    )


def test_a_stage_longer_than_the_learned_positions_of_a_from_scratch_model_upstream_is_refused():
    gpt2 = ["stages.pretrain.model.family=gpt2", "stages.pretrain.model.max_position_embeddings=96"]
    assert refused(*gpt2) == (  # sft's default max_length is 128
        "Stage 'sft' feeds sequences of up to 128 tokens (max_length), but stage 'pretrain' builds its model "
        "from scratch with model.max_position_embeddings 96, a learned table with no position beyond it: "
        "raise that or lower max_length."
    )
    fits = [
        *gpt2,
        "stages.sft.max_length=96",
        "stages.reward.max_length=96",
        "stages.ppo.max_prompt_length=64",
    ]
    config = load(*fits, "stages.ppo.max_new_tokens=32")
    assert config.stages["ppo"].longest_sequence() == (96, "max_prompt_length + max_new_tokens")
    # ppo starts from sft and reward, which start from pretrain: the limit reaches it through them.
    assert refused(*fits, "stages.ppo.max_new_tokens=33").startswith(
        "Stage 'ppo' feeds sequences of up to 97 tokens (max_prompt_length + max_new_tokens)"
    )
    # Rotary positions (llama, the default family) have no table to run past; nor has a checkpoint's.
    assert load("stages.sft.max_length=4096").stages["sft"].max_length == 4096
    assert load(*gpt2, "stages.pretrain.init_from=org/model").stages["pretrain"].position_limit() is None
