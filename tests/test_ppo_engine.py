"""The PPO engine's invariants: zero KL before the first update, one copy of the base weights with LoRA,
and the sequence reward read and placed at each response's real last token."""

from __future__ import annotations

import pytest
import torch

from pipeline.model_building import build_causal_lm
from pipeline.models import save_pretrained
from pipeline.stage_config import LoraConfig, ModelConfig
from pipeline.tokenizer_training import train_bpe_tokenizer
from stages.rl.masking import place_sequence_reward
from stages.rl.models import build_policy, build_reference, reference_mode
from stages.rl.rewards import rollout_sequences
from stages.rl.rollout import Rollout, batched_response_logprobs, left_pad, sample

LORA = LoraConfig(enabled=True, r=4, alpha=8)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A randomly initialised tiny Llama with a BPE tokenizer, saved like a pretrain stage output."""
    from pipeline.demo import generate_split

    texts = [r["text"] for r in generate_split("reviews", "corpus")[:500]]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = build_causal_lm(
        ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), tokenizer
    )
    path = tmp_path_factory.mktemp("base") / "model"
    save_pretrained(model, tokenizer, path)
    return path


@pytest.fixture(scope="module")
def sft_lora_model(base_model, tmp_path_factory):
    """An SFT stage that trained a LoRA adapter (and so hands on merged weights)."""
    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    config = load_config(
        None,
        data={
            "stages": {
                "sft": {
                    "init_from": str(base_model),
                    "data": "demo:reviews/sft",
                    "max_steps": 3,
                    "lr": 5e-2,
                    "batch_size": 8,
                    "lora": {"enabled": True, "r": 4, "alpha": 8},
                }
            }
        },
    )
    out = tmp_path_factory.mktemp("sft") / "sft"
    run_standalone(config, "sft", None, out)
    return out


def prompts_batch(tokenizer, n=6):
    prompts = ["review of the blender :", "thoughts on the old kettle :", "my review of the new phone :"] * 2
    ids = tokenizer(prompts[:n], add_special_tokens=False)["input_ids"]
    return left_pad(ids, tokenizer.pad_token_id, "cpu")


def policy_and_reference_logprobs(source, lora):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    policy = build_policy(str(source), lora)
    reference = build_reference(policy)
    query_ids, query_mask = prompts_batch(tokenizer)
    generator = torch.Generator().manual_seed(0)
    rollout = sample(
        policy, query_ids, query_mask, 10, 1.0, [tokenizer.eos_token_id], tokenizer.pad_token_id, generator
    )
    logprobs = batched_response_logprobs(policy, rollout, 1.0, 4)
    with reference_mode(policy, reference) as ref_model:
        ref_logprobs = batched_response_logprobs(ref_model, rollout, 1.0, 4)
    return rollout, logprobs, ref_logprobs


@pytest.mark.parametrize("lora", [LoraConfig(), LORA], ids=["full", "lora"])
def test_kl_to_reference_is_zero_before_the_first_update(base_model, lora):
    rollout, logprobs, ref_logprobs = policy_and_reference_logprobs(base_model, lora)
    mask = rollout.response_mask.bool()
    assert mask.sum() > 0
    assert torch.equal(logprobs[mask], ref_logprobs[mask])


def test_after_lora_sft_the_reference_is_the_sft_policy_not_the_bare_base(base_model, sft_lora_model):
    from transformers import AutoModelForCausalLM

    assert (sft_lora_model / "adapter" / "adapter_config.json").is_file()
    rollout, logprobs, ref_logprobs = policy_and_reference_logprobs(sft_lora_model, LORA)
    mask = rollout.response_mask.bool()
    assert torch.equal(logprobs[mask], ref_logprobs[mask])
    merged_sft = AutoModelForCausalLM.from_pretrained(sft_lora_model)
    bare_base = AutoModelForCausalLM.from_pretrained(base_model)
    sft_logprobs = batched_response_logprobs(merged_sft, rollout, 1.0, 4)
    base_logprobs = batched_response_logprobs(bare_base, rollout, 1.0, 4)
    assert torch.allclose(ref_logprobs[mask], sft_logprobs[mask], atol=1e-5)
    assert (ref_logprobs[mask] - base_logprobs[mask]).abs().max() > 1e-3  # the SFT adapter changed the model


def test_with_lora_the_policy_and_reference_share_one_copy_of_the_base_weights(base_model):
    from transformers import AutoModelForCausalLM

    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base_model).parameters())
    policy = build_policy(str(base_model), LORA)
    reference = build_reference(policy)
    assert reference is None
    with reference_mode(policy, reference) as ref_model:
        assert ref_model is policy
    storages = {p.untyped_storage().data_ptr(): p.numel() for p in policy.parameters()}
    adapter = sum(p.numel() for n, p in policy.named_parameters() if "lora_" in n)
    assert adapter > 0
    assert sum(storages.values()) == base_params + adapter  # base once, plus the adapter; no second copy
    # without LoRA the reference is a real second copy, frozen
    full = build_policy(str(base_model), LoraConfig())
    copy = build_reference(full)
    assert copy is not full and not any(p.requires_grad for p in copy.parameters())


def test_reward_is_read_and_placed_at_the_real_end_of_each_response():
    eos, pad, stop = 2, 0, 9
    from stages.rl.masking import response_mask

    raw = torch.tensor(
        [
            [5, eos, 7, 7],  # ends early with EOS at index 1
            [5, 6, 7, 8],  # never ends: hits the length limit
            [5, 6, stop, 3],  # ends with a custom stop token at index 2
        ]
    )
    mask, last_index, ended = response_mask(raw, [eos, stop])
    response = torch.where(mask.bool(), raw, torch.full_like(raw, pad))
    query_ids = torch.tensor([[pad, 11], [12, 13], [pad, 14]])
    query_mask = (query_ids != pad).long()
    rollout = Rollout(query_ids, query_mask, response, mask, last_index, ended)
    sequences = rollout_sequences(rollout, eos)  # what the reward model scores, read at its last index
    assert sequences == [
        [11, 5, eos],  # the EOS it produced, nothing after it
        [12, 13, 5, 6, 7, 8, eos],  # formatted like reward training: EOS appended to an unfinished response
        [14, 5, 6, stop, eos],  # stop token kept, EOS appended as in training
    ]
    assert last_index.tolist() == [1, 3, 2] and ended.tolist() == [True, False, True]
    scores = torch.tensor([float(len(seq)) for seq in sequences])
    rewards = place_sequence_reward(scores, last_index, 4)
    assert rewards.tolist() == [[0, 3.0, 0, 0], [0, 0, 0, 7.0], [0, 0, 5.0, 0]]


def test_sampling_stops_at_a_custom_stop_token_and_pads_after_it(base_model):
    """The stop token is one the model is sure to produce: the third token of the first row's greedy response,
    so that row must stop there (sampling at a low temperature follows the greedy path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    query_ids, query_mask = prompts_batch(tokenizer)
    pad = tokenizer.pad_token_id
    free = sample(model, query_ids, query_mask, 16, 1.0, [tokenizer.eos_token_id], pad, greedy=True)
    stop = int(free.response_ids[0, 2])
    first = free.response_ids[0].tolist().index(stop)  # the token may already occur earlier in the row
    assert stop not in (tokenizer.eos_token_id, pad)
    rollout = sample(model, query_ids, query_mask, 16, 1e-4, [stop], pad, torch.Generator().manual_seed(1))
    assert bool(rollout.ended[0]) and int(rollout.last_index[0]) == first
    for row in range(rollout.response_ids.shape[0]):
        tokens = rollout.response_ids[row].tolist()
        end = int(rollout.last_index[row])
        if rollout.ended[row]:
            assert tokens[end] == stop and stop not in tokens[:end]
        else:
            assert stop not in tokens and end == len(tokens) - 1
        assert all(t == pad for t in tokens[end + 1 :])
        assert rollout.response_mask[row].sum() == end + 1


def test_learned_reward_model_reads_the_last_real_token_even_when_pad_equals_eos(base_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models.learned import LearnedRewardModel

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.pad_token = tokenizer.eos_token  # the common trap: padding looks like the end token
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1).eval()
    scorer = LearnedRewardModel(model, tokenizer)
    eos = tokenizer.eos_token_id
    short, long = [40, 41, eos], [40, 41, 42, 43, 44, eos]
    together = scorer.score_ids([short, long])
    alone = scorer.score_ids([short])
    assert torch.allclose(together[0], alone[0], atol=1e-5)
    assert scorer.score_texts(["a"], [" b"]).shape == (1,)
