"""The pretraining objectives' data math as small functions: BERT masking, next-sentence pairs and T5 span
corruption, plus the example builder and batch collators that apply them to tokenized text."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from pipeline.config_schema import InvalidValue

IGNORE = -100  # label of a position the loss skips (torch's cross-entropy ignore_index)


# ---------------------------------------------------------------- masked LM (Devlin et al. 2019, 3.1)
@dataclass
class MaskingConfig:
    """Of the non-special tokens, `probability` are chosen for prediction; a chosen token is replaced by
    [MASK] with `mask_rate`, by a random token with `random_rate`, and kept as it is otherwise."""

    probability: float = 0.15
    mask_rate: float = 0.8
    random_rate: float = 0.1
    whole_word: bool = False  # choose whole words: every sub-token of a chosen word is chosen

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:  # 0 chooses no token: nothing to predict, a NaN loss
            raise InvalidValue("probability", f"must be in (0, 1], got {self.probability}.")
        for name in ("mask_rate", "random_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidValue(name, f"must be in [0, 1], got {getattr(self, name)}.")
        if self.mask_rate + self.random_rate > 1.0:
            raise InvalidValue(
                "random_rate",
                f"mask_rate + random_rate must be <= 1, got {self.mask_rate + self.random_rate}.",
            )


def choose_mlm_positions(
    special_mask: torch.Tensor,
    probability: float,
    generator: torch.Generator,
    word_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask of the positions to predict: each non-special token independently with `probability`.

    With `word_ids` (same shape; the word index of each token, -1 for special tokens and padding) the draw is
    per word instead, and every token of a chosen word is chosen (whole-word masking). Special tokens
    (`special_mask` 1: [CLS], [SEP], padding) are never chosen.
    """
    eligible = special_mask == 0
    if word_ids is None:
        draw = torch.rand(special_mask.shape, generator=generator)
        return (draw < probability) & eligible
    eligible &= word_ids >= 0
    n_words = int(word_ids.max()) + 1 if eligible.any() else 0
    word_draw = torch.rand((*special_mask.shape[:-1], max(n_words, 1)), generator=generator) < probability
    chosen = word_draw.gather(-1, word_ids.clamp(min=0))  # each token takes its word's draw
    return chosen & eligible


def apply_mlm_masking(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    rates: MaskingConfig,
    generator: torch.Generator,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels): labels hold the original id at chosen positions and IGNORE elsewhere;
    a chosen position becomes `mask_id` with `rates.mask_rate`, a uniform random id in [0, vocab_size) with
    `rates.random_rate`, and keeps its id otherwise (80/10/10 in BERT)."""
    chosen = choose_mlm_positions(special_mask, rates.probability, generator, word_ids)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (action < rates.mask_rate)
    to_random = chosen & (action >= rates.mask_rate) & (action < rates.mask_rate + rates.random_rate)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def distinct_word_ids(word_ids: list[int | None], sequence_ids: list[int | None]) -> list[int]:
    """Word index of each token, counted across both segments of a pair; -1 for special tokens."""
    out, seen = [], {}
    for word, segment in zip(word_ids, sequence_ids):
        out.append(-1 if word is None else seen.setdefault((segment, word), len(seen)))
    return out


def mlm_metrics(prediction) -> dict[str, float]:
    """Accuracy of the argmax at the masked positions (and of next-sentence prediction, with nsp)."""
    predictions, labels = prediction.predictions, prediction.label_ids
    if isinstance(labels, tuple):  # BertForPreTraining: (token labels, next-sentence labels)
        (tokens, sentences), (labels, sentence_labels) = predictions, labels
        metrics = {"nsp_accuracy": float((sentences == sentence_labels).mean())}
    else:
        tokens, metrics = predictions, {}
    chosen = labels != IGNORE
    metrics["masked_accuracy"] = float((tokens[chosen] == labels[chosen]).mean())
    return metrics


def argmax_logits(logits, labels):
    """Keep only the argmax of each output, so evaluation never holds [N, T, vocab] logits."""
    return tuple(x.argmax(-1) for x in logits) if isinstance(logits, tuple) else logits.argmax(-1)


# ---------------------------------------------------------------- next-sentence prediction
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document, cut after '.', '!', '?' or ':' followed by white space."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def next_sentence_pairs(
    documents: list[list[str]], rng: random.Random, random_rate: float = 0.5
) -> list[tuple[str, str, int]]:
    """(sentence A, sentence B, label) for every pair of adjacent sentences of a document, in document order.

    With `random_rate`, B is replaced by a sentence of another document and the label is 1 ("not next");
    otherwise B is the sentence that follows A and the label is 0 (BertForPreTraining's convention).
    """
    owners = [(d, s) for d, doc in enumerate(documents) for s in doc]
    can_swap = len({d for d, _ in owners}) > 1  # another document has a sentence to draw
    pairs = []
    for d, doc in enumerate(documents):
        for first, second in zip(doc, doc[1:]):
            if can_swap and rng.random() < random_rate:
                other, sentence = rng.choice(owners)
                while other == d:
                    other, sentence = rng.choice(owners)
                pairs.append((first, sentence, 1))
            else:
                pairs.append((first, second, 0))
    return pairs


def mlm_examples(texts: list[str], tokenizer, max_length: int, nsp: bool, rng: random.Random) -> list[dict]:
    """Tokenized rows for the MaskingCollator: one per document ([CLS] text [SEP]), or with `nsp` one per
    pair of adjacent sentences ([CLS] A [SEP] B [SEP], B a random sentence half of the time, with its
    `next_sentence_label`); at most `max_length` tokens, with special-token masks and word ids."""
    pairs = None
    if nsp:
        pairs = next_sentence_pairs([split_sentences(t) for t in texts], rng)
        first, second = [a for a, _, _ in pairs], [b for _, b, _ in pairs]
    else:
        first, second = texts, None
    if not first:
        return []
    encoded = tokenizer(
        first,
        second,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_token_type_ids=nsp,
    )
    rows = []
    for i in range(len(first)):
        row = {key: encoded[key][i] for key in encoded.keys() if key != "attention_mask"}
        row["word_ids"] = distinct_word_ids(encoded.word_ids(i), encoded.sequence_ids(i))
        if pairs:
            row["next_sentence_label"] = pairs[i][2]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- span corruption (Raffel et al. 2020, 3.1.4)
def noise_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` tokens: round(length * noise_density) tokens,
    at least 1 and at most length - 1, in round(noise / mean_span_length) spans, at least 1."""
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}.")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    return n_noise, min(max(round(n_noise / mean_span_length), 1), n_noise, length - n_noise)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span_length: float, rng: random.Random
) -> list[bool]:
    """T5's noise mask (True = noise) with `noise_counts` tokens and spans; spans and the gaps between them
    have random non-empty lengths, and the sequence starts with a gap."""
    n_noise, n_spans = noise_counts(length, noise_density, mean_span_length)

    def segment(total: int, parts: int) -> list[int]:  # random composition of `total` into `parts` >= 1
        cuts = sorted(rng.sample(range(1, total), parts - 1))
        return [b - a for a, b in zip([0, *cuts], [*cuts, total])]

    mask: list[bool] = []
    for gap, span in zip(segment(length - n_noise, n_spans), segment(n_noise, n_spans)):
        mask += [False] * gap + [True] * span
    return mask


def corrupt_spans(
    tokens: list[int], noise_mask: list[bool], sentinel_ids: list[int]
) -> tuple[list[int], list[int]]:
    """(inputs, targets): in the inputs each noise span is replaced by the next sentinel; the targets list
    each sentinel followed by the span it replaced, and end with one more sentinel (as in the T5 paper)."""
    inputs: list[int] = []
    targets: list[int] = []
    n_spans = 0
    for i, (token, noisy) in enumerate(zip(tokens, noise_mask)):
        if noisy and (i == 0 or not noise_mask[i - 1]):  # a span starts
            if n_spans >= len(sentinel_ids) - 1:
                raise ValueError(f"{n_spans + 2} sentinels needed, only {len(sentinel_ids)} exist.")
            inputs.append(sentinel_ids[n_spans])
            targets.append(sentinel_ids[n_spans])
            n_spans += 1
        (targets if noisy else inputs).append(token)
    targets.append(sentinel_ids[n_spans])
    return inputs, targets


def span_corruption(
    tokens: list[int],
    noise_density: float,
    mean_span_length: float,
    sentinel_ids: list[int],
    rng: random.Random,
) -> tuple[list[int], list[int]]:
    """T5's denoising example from `tokens`: (inputs with sentinels, targets) of a random noise mask."""
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    return corrupt_spans(tokens, mask, sentinel_ids)


# ---------------------------------------------------------------- collators
def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class MaskingCollator:
    """Pads a batch of tokenized rows and masks it afresh on every call (dynamic masking, as in RoBERTa).
    Rows that already carry `labels` (the held-out set, masked once so every evaluation sees the same
    positions) are only padded."""

    def __init__(self, tokenizer, rates: MaskingConfig, seed: int):
        self.tokenizer, self.rates = tokenizer, rates
        self.generator = torch.Generator().manual_seed(seed)

    def mask(self, ids: torch.Tensor, special: torch.Tensor, word_ids: torch.Tensor):
        return apply_mlm_masking(
            ids,
            special,
            self.tokenizer.mask_token_id,
            len(self.tokenizer),
            self.rates,
            self.generator,
            word_ids if self.rates.whole_word else None,
        )

    def mask_once(self, rows: list[dict]) -> list[dict]:
        """Mask each row now, in place: a held-out set then scores the same positions at every evaluation."""
        for row in rows:
            columns = ("input_ids", "special_tokens_mask", "word_ids")
            masked, labels = self.mask(*(torch.tensor(row[c]) for c in columns))
            row["input_ids"], row["labels"] = masked.tolist(), labels.tolist()
        return rows

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": pad([r["input_ids"] for r in rows], self.tokenizer.pad_token_id),
            "attention_mask": pad([[1] * len(r["input_ids"]) for r in rows], 0),
        }
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = pad([r["token_type_ids"] for r in rows], 0)
        if "next_sentence_label" in rows[0]:
            batch["next_sentence_label"] = torch.tensor([r["next_sentence_label"] for r in rows])
        if "labels" in rows[0]:
            batch["labels"] = pad([r["labels"] for r in rows], IGNORE)
        else:
            special = pad([r["special_tokens_mask"] for r in rows], 1)
            word_ids = pad([r["word_ids"] for r in rows], -1)
            batch["input_ids"], batch["labels"] = self.mask(batch["input_ids"], special, word_ids)
        return batch


class SpanCorruptionCollator:
    """Pads a batch for an encoder-decoder; rows holding only `tokens` are span-corrupted afresh on every
    call, rows that already carry `input_ids` and `labels` (the held-out set) are only padded."""

    def __init__(
        self, tokenizer, sentinel_ids: list[int], noise_density: float, mean_span_length: float, seed
    ):
        self.tokenizer, self.sentinel_ids = tokenizer, sentinel_ids
        self.noise_density, self.mean_span_length = noise_density, mean_span_length
        self.rng = random.Random(seed)

    def corrupt(self, tokens: list[int]) -> dict[str, list[int]]:
        eos = self.tokenizer.eos_token_id
        inputs, targets = span_corruption(
            tokens, self.noise_density, self.mean_span_length, self.sentinel_ids, self.rng
        )
        return {"input_ids": inputs + [eos], "labels": targets + [eos]}

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        rows = [r if "labels" in r else self.corrupt(r["tokens"]) for r in rows]
        return {
            "input_ids": pad([r["input_ids"] for r in rows], self.tokenizer.pad_token_id),
            "attention_mask": pad([[1] * len(r["input_ids"]) for r in rows], 0),
            "labels": pad([r["labels"] for r in rows], IGNORE),
        }
