"""Randomly initialised models of a real family (llama, qwen2, gpt2, bert, t5) at the sizes of a
`model:` config block, for pretraining from scratch."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.stage_config import ModelConfig

# The model.* sizes, in order, under each family's config names: llama, qwen2 and bert share HF's usual ones.
SIZE_NAMES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
GPT2_SIZE_NAMES = ("n_embd", "n_layer", "n_head", "n_inner", "n_positions")


def _sizes(cfg: ModelConfig, tokenizer, names: tuple[str, ...] = SIZE_NAMES) -> dict[str, int]:
    """The vocabulary (the tokenizer's) and `model.*` sizes under a family's config names."""
    sizes = (
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.intermediate_size,
        cfg.max_position_embeddings,
    )
    return {"vocab_size": len(tokenizer), **dict(zip(names, sizes, strict=True))}


def _dropout(cfg: ModelConfig, *keys: str) -> dict[str, float]:
    """The family's own dropout keys set to `model.dropout`; none (the family's default) when it is unset."""
    return {} if cfg.dropout is None else dict.fromkeys(keys, cfg.dropout)


def build_causal_lm(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised causal LM of the family and size in `cfg`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    if cfg.family not in ("llama", "gpt2", "qwen2"):
        raise UserError(f"A causal LM is built from model.family llama, gpt2 or qwen2, not '{cfg.family}'.")
    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if cfg.family == "gpt2":
        config = GPT2Config(
            **_sizes(cfg, tokenizer, GPT2_SIZE_NAMES),
            **ids,
            **_dropout(cfg, "resid_pdrop", "embd_pdrop", "attn_pdrop"),
        )
    else:
        family = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.family]
        config = family(
            **_sizes(cfg, tokenizer),
            num_key_value_heads=cfg.num_heads,
            **ids,
            **_dropout(cfg, "attention_dropout"),
        )
    return AutoModelForCausalLM.from_config(config)


def bert_config(cfg: ModelConfig, tokenizer, **kwargs: Any):
    """The BertConfig of the size in `cfg`; kwargs (num_labels, id2label, ...) pass through."""
    from transformers import BertConfig

    return BertConfig(
        **_sizes(cfg, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_dropout(cfg, "hidden_dropout_prob", "attention_probs_dropout_prob"),
        **kwargs,
    )


def t5_config(cfg: ModelConfig, tokenizer, **kwargs: Any):
    """The T5Config of the size in `cfg` (`num_layers` in the encoder and in the decoder)."""
    from transformers import T5Config

    return T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.hidden_size,
        d_kv=cfg.hidden_size // cfg.num_heads,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5 starts decoding from the pad token
        **_dropout(cfg, "dropout_rate"),
        **kwargs,
    )


def build_masked_lm(cfg: ModelConfig, tokenizer, next_sentence: bool = False) -> torch.nn.Module:
    """A randomly initialised BERT: BertForMaskedLM, or BertForPreTraining (MLM + next-sentence head)."""
    from transformers import BertForMaskedLM, BertForPreTraining

    if cfg.family != "bert":
        raise UserError(f"A masked LM is built from model.family 'bert', not '{cfg.family}'.")
    return (BertForPreTraining if next_sentence else BertForMaskedLM)(bert_config(cfg, tokenizer))


def build_seq2seq_lm(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised T5 encoder-decoder (T5ForConditionalGeneration)."""
    from transformers import T5ForConditionalGeneration

    if cfg.family != "t5":
        raise UserError(f"An encoder-decoder is built from model.family 't5', not '{cfg.family}'.")
    return T5ForConditionalGeneration(t5_config(cfg, tokenizer))
