"""A reward model on an encoder backbone: TRL's RewardTrainer on a BERT, scoring by the model's own [CLS]
forward with right padding, the RL reward mix re-tokenizing text for it, and the branching graph of
configs/demo-encoder-rm.yaml."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.demo.reviews import NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES
from pipeline.errors import UserError
from pipeline.model_building import build_masked_lm
from pipeline.models import save_pretrained, sequence_scores, token_scores
from pipeline.stage_config import ModelConfig
from reward_models.learned import LearnedRewardModel

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-encoder-rm.yaml"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT masked LM with its own tokenizer, saved like a pretrain stage."""
    from pipeline.demo import generate_split
    from pipeline.tokenizer_training import train_encoder_tokenizer

    tokenizer = train_encoder_tokenizer([r["text"] for r in generate_split("reviews", "corpus")[:400]], 300)
    torch.manual_seed(0)
    cfg = ModelConfig(family="bert", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    path = tmp_path_factory.mktemp("bert") / "model"
    save_pretrained(build_masked_lm(cfg, tokenizer), tokenizer, path)
    return path


@pytest.fixture(scope="module")
def encoder_reward_model(tiny_bert, tmp_path_factory) -> Path:
    """The reward stage (TRL's RewardTrainer) on the BERT, with pairs that differ in one adjective's sign."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("reward_enc")
    rng = random.Random(0)
    rows = [
        {
            "prompt": f"review of the {rng.choice(['kettle', 'phone', 'novel'])} :",
            "chosen": f" the {aspect} is {rng.choice(POSITIVE_ADJECTIVES)} .",
            "rejected": f" the {aspect} is {rng.choice(NEGATIVE_ADJECTIVES)} .",
        }
        for aspect in rng.choices(["lid", "motor", "price", "screen"], k=300)
    ]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = {"kind": "reward", "init_from": str(tiny_bert), "data": str(root / "prefs.jsonl"), "lr": 3e-3,
             "eval_fraction": 0.2, "max_steps": 40, "batch_size": 16, "log_every": 100}  # fmt: skip
    (root / "c.yaml").write_text(yaml.safe_dump({"name": "t", "threads": 1, "stages": {"reward_enc": stage}}))
    assert main(["run", str(root / "c.yaml"), "--run-dir", str(root / "run")]) == 0
    return root / "run" / "reward_enc"


def test_reward_trainer_trains_an_encoder_reward_model(encoder_reward_model):
    from transformers import BertForSequenceClassification

    metrics = json.loads((encoder_reward_model / "rlhf_stage.json").read_text())["metrics"]
    assert metrics["eval_accuracy"] >= 0.8 > metrics["eval_accuracy_before"]
    model = BertForSequenceClassification.from_pretrained(encoder_reward_model)
    assert model.config.num_labels == 1
    scorer = LearnedRewardModel.load(str(encoder_reward_model))
    good, bad = scorer.score_texts(
        ["review of the kettle :"] * 2, [" the lid is great .", " the lid is awful ."]
    )
    assert good > bad


def test_encoder_scores_come_from_its_own_forward_with_right_padding(encoder_reward_model):
    scorer = LearnedRewardModel.load(str(encoder_reward_model))
    short, long = scorer.encode(
        ["review of the kettle :"] * 2, [" it is good .", " the lid is good , and it is bad ."]
    )
    assert short[0] == scorer.tokenizer.cls_token_id and short[-1] == scorer.tokenizer.sep_token_id
    together = scorer.score_ids([short, long])
    alone = scorer.score_ids([short])
    assert together[0].item() == pytest.approx(alone[0].item(), abs=1e-5)  # padding does not move the score
    ids = torch.tensor([long])
    own = scorer.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
    assert together[1].item() == pytest.approx(own.item(), abs=1e-5)
    assert sequence_scores(scorer.model, ids, torch.ones_like(ids)).item() == pytest.approx(
        own.item(), abs=1e-5
    )


def test_encoder_text_is_formatted_as_trl_formats_it(encoder_reward_model):
    """TRL's RewardTrainer appends the EOS token as text and lets the tokenizer add its specials."""
    from transformers import AutoTokenizer

    scorer = LearnedRewardModel.load(str(encoder_reward_model))
    tokenizer = AutoTokenizer.from_pretrained(encoder_reward_model)
    prompt, completion = "review of the kettle :", " it is good ."
    assert scorer.encode([prompt], [completion]) == [
        tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    ]


def test_an_encoder_has_no_per_token_scores_for_a_value_head(encoder_reward_model):
    scorer = LearnedRewardModel.load(str(encoder_reward_model))
    ids = torch.tensor([scorer.encode(["a :"], [" b ."])[0]])
    with pytest.raises(UserError, match="value_init: policy"):
        token_scores(scorer.model, ids, torch.ones_like(ids))


def test_rl_reward_mix_hands_an_encoder_text_in_its_own_tokenizer(encoder_reward_model):
    from pipeline.tokenizer_training import train_bpe_tokenizer
    from stages.rl.rewards import build_reward_mix

    policy_tokenizer = train_bpe_tokenizer(["review of the kettle : it is good ."] * 10, vocab_size=280)
    mix = build_reward_mix(
        reward_model=str(encoder_reward_model),
        reward_model_weight=1.0,
        functions={},
        policy_tokenizer=policy_tokenizer,
        device="cpu",
        clip=None,
        normalize=False,
    )
    assert not mix.sources[0].same_tokenizer
    prompts, completions = ["review of the kettle :"] * 2, [" the lid is great .", " the lid is awful ."]
    scores = mix.score(None, prompts, completions, policy_tokenizer.eos_token_id)  # no token ids needed
    expected = LearnedRewardModel.load(str(encoder_reward_model)).score_texts(prompts, completions)
    assert torch.allclose(scores["total"], expected) and scores["total"][0] > scores["total"][1]


# ---------------------------------------------------------------- the branching graph
def test_encoder_rm_config_orders_both_branches():
    from pipeline.runner import build_graph, topological_order

    nodes = build_graph(load_config(CONFIG))
    order = topological_order(nodes)
    assert order.index("pretrain") < order.index("sft") < order.index("ppo")
    assert order.index("pretrain_mlm") < order.index("reward_enc") < order.index("ppo")
    assert sorted(nodes["ppo"].depends_on) == ["reward_enc", "sft"]
    assert nodes["reward_enc"].depends_on == ["pretrain_mlm"] and nodes["pretrain_mlm"].depends_on == []
    assert nodes["ppo"].config.value_init == "policy"
    assert (
        nodes["pretrain_mlm"].config.objective == "mlm"
        and nodes["pretrain_mlm"].config.model.family == "bert"
    )


def test_only_and_from_select_within_one_branch(tmp_path):
    from pipeline.runner import Runner

    runner = Runner(load_config(CONFIG), tmp_path / "run")
    assert runner.select("reward_enc", None) == (["reward_enc"], {"reward_enc"})
    order, forced = runner.select(None, "pretrain_mlm")
    assert order == runner.order and forced == {"pretrain_mlm", "reward_enc", "ppo"}  # not the CLM branch
    assert runner.select(None, "sft")[1] == {"sft", "ppo"}  # not the encoder branch
    assert runner.select(None, None)[1] == set()
    assert not (tmp_path / "run").exists()  # selecting trains nothing and writes nothing
