"""Shared fixtures: one tiny pipeline run (every stage for real, a few seconds each) reused by many tests."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = {
    "name": "tiny",
    "seed": 0,
    "threads": 2,
    "stages": {
        "pretrain": {
            "kind": "pretrain",
            "data": "demo:reviews/corpus",
            "model": {
                "family": "llama",
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "intermediate_size": 128,
                "max_position_embeddings": 128,
                "vocab_size": 384,
            },
            "block_size": 64,
            "max_steps": 60,
            "batch_size": 32,
            "lr": 3e-3,
            "log_every": 100,
        },
        "sft": {
            "kind": "sft",
            "init_from": "pretrain",
            "data": "demo:reviews/sft",
            "max_steps": 40,
            "batch_size": 32,
            "lr": 2e-3,
            "log_every": 100,
        },
        "reward": {
            "kind": "reward",
            "init_from": "sft",
            "data": "demo:reviews/prefs",
            "max_steps": 80,
            "batch_size": 32,
            "lr": 3e-3,
            "eval_fraction": 0.1,
            "log_every": 100,
        },
        "ppo": {
            "kind": "ppo",
            "policy": "sft",
            "reward_model": "reward",
            "prompts": "demo:reviews/prompts",
            "total_episodes": 256,
            "batch_size": 32,
            "minibatch_size": 16,
            "ppo_epochs": 2,
            "lr": 1e-3,
            "max_new_tokens": 12,
            "kl_coef": 0.05,
        },
    },
    "evaluation": {
        "baseline": "sft",
        "candidate": "ppo",
        "reward_model": "reward",
        "gold": "reward_models.gold:reviews_gold",
        "prompts": "demo:reviews/eval_prompts",
        "max_prompts": 16,
        "samples_per_prompt": 2,
        "max_new_tokens": 12,
        "bootstrap_resamples": 500,
    },
}


def tiny_config_dict() -> dict:
    return copy.deepcopy(TINY)


def gold_rl_block(**overrides) -> dict:
    """A small RL block scored by the reviews gold scorer alone (no reward model): 2 steps of 4 prompts x 4
    samples, short responses. `overrides` add or replace keys (kind, algorithm, policy, ...)."""
    return {
        "reward_model": None,
        "reward_functions": {"reward_models.gold:reviews_gold": 1.0},
        "prompts": "demo:reviews/prompts",
        "total_episodes": 32,
        "batch_size": 4,
        "group_size": 4,
        "minibatch_size": 8,
        "ppo_epochs": 1,
        "max_new_tokens": 6,
        **overrides,
    }


def finished_run(tmp_path_factory, name: str, config: dict) -> Path:
    """Run `config` with `rlhf run` into a fresh folder and return its run directory (all of it finished)."""
    import yaml

    from pipeline.cli import main

    root = tmp_path_factory.mktemp(name)
    config_file = root / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    run_dir = root / "run"
    assert main(["run", str(config_file), "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run directory (all four stages and the evaluation)."""
    return finished_run(tmp_path_factory, "tiny", tiny_config_dict())


@pytest.fixture(scope="session")
def tiny_config_file(tiny_run: Path) -> Path:
    return tiny_run.parent / "tiny.yaml"


CHAT_TEMPLATE = str(Path(__file__).resolve().parent.parent / "configs" / "chat_template.jinja")
ROLE_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>"]


def tiny_chat_config_dict() -> dict:
    """The tiny pipeline on the chat demo task: a tokenizer trained with role markers and a chat template."""
    config = tiny_config_dict()
    config["name"] = "tiny-chat"
    stages = config["stages"]
    stages["pretrain"]["data"] = "demo:chat/corpus"
    stages["pretrain"]["model"].update(max_position_embeddings=192, special_tokens=ROLE_MARKERS)
    stages["pretrain"]["chat_template"] = CHAT_TEMPLATE
    stages["sft"].update(data="demo:chat/sft", max_length=160)
    stages["reward"].update(data="demo:chat/prefs", max_length=160)
    stages["ppo"].update(prompts="demo:chat/prompts", max_prompt_length=128)
    config["evaluation"]["prompts"] = "demo:chat/eval_prompts"
    return config


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory) -> Path:
    """A finished tiny run on conversational data (every stage and the evaluation)."""
    return finished_run(tmp_path_factory, "tiny-chat", tiny_chat_config_dict())
