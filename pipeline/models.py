"""Building tiny models from a config block, loading checkpoints by path or hub id, training tokenizers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ModelConfig
from pipeline.errors import UserError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts` (no BOS added: prompts and completions concatenate)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def build_causal_lm(cfg: ModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised causal LM of the family and size in `cfg`."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if cfg.family == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_position_embeddings,
            **ids,
        )
    else:
        family = {"llama": LlamaConfig, "qwen2": Qwen2Config}[cfg.family]
        config = family(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            **ids,
        )
    return AutoModelForCausalLM.from_config(config)


def check_model_source(source: str) -> None:
    path = Path(source)
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(
            f"'{source}' is not a model folder: it has no config.json (expected a save_pretrained folder)."
        )


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"Could not load a tokenizer from '{source}': {exc}") from exc
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"The tokenizer of '{source}' has no EOS token: responses could never end. Set eos_token."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out, so EOS can stand in
    return tokenizer


def load_model(
    auto_class: str, source: str, trust_remote_code: bool = False, **kwargs: Any
) -> torch.nn.Module:
    """`auto_class` is e.g. 'AutoModelForCausalLM'; errors name the source and what was expected."""
    import transformers

    check_model_source(source)
    loader = getattr(transformers, auto_class)
    try:
        return loader.from_pretrained(source, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"Could not load {auto_class} from '{source}': {exc}") from exc


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded prompt sees the positions it was trained with."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Per-token scalar scores [B, T] of a *ForSequenceClassification model (num_labels=1).

    The library's own pooling picks the last non-pad token, which is wrong when pad == eos; reading every
    position lets callers pick the exact index (the response's real last token) themselves.
    """
    if hasattr(model, "get_base_model"):  # peft: the wrapped model still routes through the adapters
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    ).last_hidden_state
    return model.score(hidden).squeeze(-1)


def save_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
    """HF-native output: safetensors weights, config, generation config and tokenizer in one folder."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
