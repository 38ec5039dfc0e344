"""Building tiny models from a config block, loading checkpoints by path or hub id, training tokenizers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.log import log
from pipeline.stage_config import ModelConfig

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}
# encoders: [SEP] ends every sequence, so it also serves as EOS (TRL's reward data appends an EOS)
ENCODER_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
SEQ2SEQ_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}  # T5's ids 0, 1, 2


def _train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts` (no BOS added: prompts and completions concatenate)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = _train_bpe(texts, vocab_size, list(SPECIAL_TOKENS.values()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def train_encoder_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer for a BERT-style encoder: `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]`
    (token type 1 for B), and a [MASK] token."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokenizer = _train_bpe(texts, vocab_size, list(ENCODER_SPECIAL_TOKENS.values()))
    cls, sep = ENCODER_SPECIAL_TOKENS["cls_token"], ENCODER_SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls, sep)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=sep, **ENCODER_SPECIAL_TOKENS)


def sentinel_tokens(n: int) -> list[str]:
    return [f"<extra_id_{i}>" for i in range(n)]


def train_seq2seq_tokenizer(texts: Iterable[str], vocab_size: int, n_sentinels: int):
    """A byte-level BPE tokenizer for a T5-style encoder-decoder: EOS appended to every sequence, and
    `n_sentinels` span-corruption sentinels <extra_id_0>, <extra_id_1>, ..."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    sentinels = sentinel_tokens(n_sentinels)
    tokenizer = _train_bpe(texts, vocab_size, [*SEQ2SEQ_SPECIAL_TOKENS.values(), *sentinels])
    eos = SEQ2SEQ_SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, additional_special_tokens=sentinels, **SEQ2SEQ_SPECIAL_TOKENS
    )


def sentinel_ids(tokenizer) -> list[int]:
    """The ids of <extra_id_0>, <extra_id_1>, ... in order, as far as the tokenizer has them."""
    vocab = tokenizer.get_vocab()
    ids = []
    while f"<extra_id_{len(ids)}>" in vocab:
        ids.append(vocab[f"<extra_id_{len(ids)}>"])
    return ids


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
