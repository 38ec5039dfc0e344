"""The model families people fine-tune: a tiny random model of each, built from its own config class with
its structural features (grouped-query attention, tied or untied embeddings, sliding windows, soft-capping),
saved to a folder and passed as a path, goes through SFT with LoRA, then PPO with a value head and GRPO.
No download: the tokenizer is trained on the demo corpus."""

from __future__ import annotations

import json

import pytest
from conftest import gold_rl_block

SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def family_config(family: str, vocab: int, ids: dict):
    import transformers as t

    gqa = dict(num_key_value_heads=2, max_position_embeddings=128, **SIZE)
    if family == "llama":  # Llama 3.x: GQA, tied embeddings in the small ones
        return t.LlamaConfig(tie_word_embeddings=True, **gqa, **ids, vocab_size=vocab)
    if family == "qwen2":
        return t.Qwen2Config(tie_word_embeddings=True, **gqa, **ids, vocab_size=vocab)
    if family == "qwen3":  # per-head q/k norms, explicit head_dim
        return t.Qwen3Config(head_dim=8, tie_word_embeddings=True, **gqa, **ids, vocab_size=vocab)
    if family == "mistral":  # sliding-window attention, untied embeddings
        return t.MistralConfig(sliding_window=16, tie_word_embeddings=False, **gqa, **ids, vocab_size=vocab)
    if family == "gemma2":  # soft-capped attention and final logits, alternating sliding windows
        return t.Gemma2Config(
            head_dim=8,
            sliding_window=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            **gqa,
            **ids,
            vocab_size=vocab,
        )
    if family == "gemma3":
        return t.Gemma3TextConfig(head_dim=8, sliding_window=16, **gqa, **ids, vocab_size=vocab)
    if family == "phi3":  # fused qkv and gate_up projections
        return t.Phi3Config(tie_word_embeddings=False, **gqa, **ids, vocab_size=vocab)
    if family == "gpt2":  # Conv1D layers, learned positions
        return t.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, **ids, vocab_size=vocab
        )
    if family == "gpt_neox":  # Pythia: fused query_key_value, parallel residual, rotary on part of each head
        mha = gqa | {"num_key_value_heads": 4}  # GPT-NeoX has no grouped-query attention
        return t.GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **mha, **ids, vocab_size=vocab)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module")
def tokenizer():
    from pipeline.demo import generate_split
    from pipeline.tokenizer_training import train_bpe_tokenizer

    return train_bpe_tokenizer([r["text"] for r in generate_split("reviews", "corpus")[:400]], vocab_size=300)


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_with_lora_then_ppo_and_grpo_on_each_family(family, tokenizer, tmp_path):
    import torch
    import yaml
    from transformers import AutoModelForCausalLM

    from pipeline.cli import main
    from pipeline.models import save_pretrained

    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_config(family, len(tokenizer), ids))
    save_pretrained(model, tokenizer, tmp_path / "base")
    stages = {
        "sft": {
            "init_from": str(tmp_path / "base"),
            "data": "demo:reviews/sft",
            "max_steps": 2,
            "batch_size": 8,
            "lora": {"enabled": True, "r": 4, "alpha": 8},
        },
        "ppo": gold_rl_block(kind="rl", algorithm="ppo", policy="sft", value_init="policy"),
        "grpo": gold_rl_block(kind="rl", algorithm="grpo", policy="sft"),
    }
    config_file = tmp_path / "family.yaml"
    config_file.write_text(yaml.safe_dump({"name": family, "threads": 2, "stages": stages}))
    assert main(["run", str(config_file), "--run-dir", str(tmp_path / "run")]) == 0
    for name in ("ppo", "grpo"):
        history = json.loads((tmp_path / "run" / name / "history.json").read_text())
        assert len(history) == 2 and history[0]["kl"] == 0.0, (name, history[0]["kl"])
        assert all(abs(row["policy_loss"]) < 1e3 for row in history)
    assert "value_loss" in json.loads((tmp_path / "run" / "ppo" / "history.json").read_text())[0]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "grpo")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shared_value_head_path_gives_the_policys_own_logits(family, tokenizer):
    """PPO's shared value head reads the policy's last hidden state from the same forward as the logits: the
    logits are the policy's own (Gemma 2's final soft-capping included), so sampling and training agree."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import position_ids_from_mask
    from stages.rl.models import SharedValueHead, backbone_and_lm_head
    from stages.rl.rollout import response_logits, response_logits_and_values

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(family_config(family, len(tokenizer), ids)).eval()
    head = SharedValueHead(backbone_and_lm_head(policy)[1].in_features)
    torch.nn.init.normal_(head.score.weight)
    sequence = torch.randint(3, len(tokenizer), (2, 9))
    mask = torch.ones_like(sequence)
    mask[1, :2] = 0  # a left-padded prompt
    with torch.no_grad():
        logits, values = response_logits_and_values(policy, head, sequence, mask, width=5)
        expected = response_logits(policy, sequence, mask, 5)
        positions = position_ids_from_mask(mask)
        output = policy(
            input_ids=sequence, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
        hidden = output.hidden_states[-1]
    assert torch.allclose(logits, expected, atol=1e-5)
    assert logits.shape[1] == values.shape[1] == 4  # positions 4 .. 7 predict the 4 response tokens
    assert torch.allclose(values, head(hidden[:, 4:-1]), atol=1e-5)
