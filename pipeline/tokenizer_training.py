"""Training small BPE tokenizers locally (decoder, encoder and seq2seq variants), so a model can be built
from scratch without downloading anything, and the sentinel tokens of span corruption."""

from __future__ import annotations

from collections.abc import Iterable

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
