"""Loading checkpoints by path or hub id and saving them, and what the stages ask of a loaded model
(its backbone, whether it is a peft wrapper, per-token and per-sequence scores)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.log import log

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_source(source: str, tokenizer_only: bool = False) -> None:
    """A local folder must be a save_pretrained folder: a model's (config.json), or for a tokenizer alone a
    tokenizer's (tokenizer.json or tokenizer_config.json). A hub id is left to from_pretrained."""
    path = Path(source)
    expected = ("config.json", *TOKENIZER_FILES) if tokenizer_only else ("config.json",)
    if path.exists() and not any((path / name).is_file() for name in expected):
        what = "model or tokenizer folder" if tokenizer_only else "model folder"
        raise UserError(
            f"'{source}' is not a {what}: it has no {' or '.join(expected)} "
            "(expected a save_pretrained folder)."
        )
    if not tokenizer_only and (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        # transformers would attach the adapter at load time, and switching "the" adapter off for a KL
        # reference would then switch it off too, leaving the bare base as the reference (TRL #3196).
        raise UserError(
            f"'{source}' holds both model weights (config.json) and a peft adapter (adapter_config.json), so "
            "which of them is the model is ambiguous. Merge the adapter into the weights (peft's "
            "merge_and_unload, then save_pretrained into a new folder), or move the adapter to a subfolder."
        )


def load_tokenizer(source: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(source, tokenizer_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"Could not load a tokenizer from '{source}': {exc}") from exc
    if tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None:
        tokenizer.eos_token = tokenizer.sep_token  # an encoder's sequences end with [SEP]
    if tokenizer.eos_token_id is None:
        raise UserError(
            f"The tokenizer of '{source}' has no EOS token: responses could never end. Set eos_token."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is always masked out, so EOS can stand in
    return tokenizer


def load_model(
    auto_class: str, source: str, trust_remote_code: bool = False, dtype: str = "float32", **kwargs: Any
) -> torch.nn.Module:
    """`auto_class` is e.g. 'AutoModelForCausalLM'; errors name the source and what was expected.

    Weights come in `dtype` (a stage's `dtype` key), not in the checkpoint's stored dtype: transformers 5
    would load a bf16 checkpoint as bf16 parameters, and training those has no float32 master copy.
    """
    import transformers

    check_model_source(source)
    loader = getattr(transformers, auto_class)
    try:
        model = loader.from_pretrained(
            source, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype), **kwargs
        )
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"Could not load {auto_class} from '{source}': {exc}") from exc
    if dtype == "bfloat16":
        log(
            f"note: {auto_class} from '{source}' held in pure bfloat16 (dtype: bfloat16): no float32 master "
            "weights, so updates smaller than ~1/256 of a weight are rounded away"
        )
    return model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded prompt sees the positions it was trained with."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_peft(model: torch.nn.Module) -> bool:
    """A peft wrapper? (It exists only if peft was imported: peft is not imported here for it, ~2 s.)"""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def without_peft_wrapper(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (its adapters sit in its layers, so they still run)."""
    return model.get_base_model() if is_peft(model) else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The trunk under a task head (e.g. LlamaModel in LlamaForCausalLM / LlamaForSequenceClassification)."""
    model = without_peft_wrapper(model)
    return getattr(model, model.base_model_prefix)


def is_encoder_classifier(model: torch.nn.Module) -> bool:
    """True for encoder classifiers (BERT and kin), which pool the first token through their own head
    (`classifier`); decoder classifiers have a per-token `score` head instead."""
    return not hasattr(without_peft_wrapper(model), "score")


def token_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Per-token scalar scores [B, T] of a decoder *ForSequenceClassification model (num_labels=1).

    The library's own pooling picks the last non-pad token, which is wrong when pad == eos; reading every
    position lets callers pick the exact index (the response's real last token) themselves. An encoder
    classifier has no per-token scores (every position sees the whole sequence): see `sequence_scores`.
    """
    if is_encoder_classifier(model):
        raise UserError(
            f"{type(model).__name__} is an encoder classifier: it scores whole sequences, not tokens, so it "
            "cannot serve as a value model (with an encoder reward model set value_init: policy)."
        )
    with root_unsharded(model):
        hidden = backbone(model)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
        ).last_hidden_state
        return without_peft_wrapper(model).score(hidden).squeeze(-1)


@contextlib.contextmanager
def root_unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Gathers the parameters of a model's outermost FSDP2 unit while its parts are called one by one.

    FSDP2 gathers a unit's parameters in the hook of that unit's own forward. A model sharded by Accelerate
    for a Trainer stage has one unit per decoder layer and one at the root holding everything else
    (embeddings, final norm, score head): calling the trunk and then the head, as `token_scores` does, never
    runs the root's forward, so its parameters would stay sharded. Every process must enter together."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def sequence_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """One scalar score [B] per right-padded sequence: a decoder's head read at the last real token, an
    encoder's own forward (its pooled first token, e.g. BERT's [CLS] through pooler and classifier)."""
    if is_encoder_classifier(model):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
    last = attention_mask.long().sum(1) - 1
    return token_scores(model, input_ids, attention_mask).gather(1, last[:, None]).squeeze(1)


def save_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path) -> None:
    """HF-native output: safetensors weights, config, generation config and tokenizer in one folder."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
