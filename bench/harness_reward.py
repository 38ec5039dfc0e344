"""The peer harness's reward as a reward function for our RL stage, for runs where both sides must see the
same reward: the reward model's score of the prompt + completion *text*, tokenized by the harness's tokenizer
(BOS prepended, no EOS appended), as trl_grpo.py and trl_rloo.py score it. Our stage's own learned-RM path
scores prompt + response + EOS ids instead, the format TRL's RewardTrainer trains on, which the harness's
reward model (trained by make_tiny.py without EOS) never saw.

Used by bench/compare_peers.py (part `same-reward`) as
  stages.grpo.reward_functions={"bench.harness_reward:score": 1.0} stages.grpo.reward_model=null
with PYTHONPATH=<repo> and BENCH_REWARD_MODEL=<reward model folder> in the environment (a bench-only shim:
reward functions take no arguments from the config).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def _reward_model():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = os.environ["BENCH_REWARD_MODEL"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def score(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    tokenizer, model = _reward_model()
    # bench prompts carry "<s>" as text for our stage (see common.ensure_data); the tokenizer adds its own
    texts = [p.removeprefix("<s>") + c for p, c in zip(prompts, completions)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**encoded).logits.squeeze(-1).tolist()
