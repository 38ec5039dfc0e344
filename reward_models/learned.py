"""A learned reward model (*ForSequenceClassification): a decoder scored at each response's real last token,
an encoder (BERT and kin) by its own pooled [CLS] score."""

from __future__ import annotations

import torch

from pipeline.chat import conversation_ids
from pipeline.errors import ConfigError
from pipeline.models import is_encoder_classifier, load_model, load_tokenizer, sequence_scores


class LearnedRewardModel:
    """Scores text exactly as TRL's RewardTrainer formatted it in training: prompt + completion + EOS, or
    for a conversation (prompt and completion as message lists) the whole conversation through the
    tokenizer's chat template.

    A decoder reads its score at the real last token (`pipeline.models.sequence_scores`), an encoder
    from its own pooled first token; both take right-padded batches. An encoder's tokenizer may differ from
    the policy's: the RL stage and the evaluation then hand it text, which it tokenizes itself.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = "reward_model", batch_size: int = 128):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size

    @classmethod
    def load(
        cls,
        source: str,
        name: str = "reward_model",
        device: torch.device | str = "cpu",
        trust_remote_code: bool = False,
    ) -> LearnedRewardModel:
        tokenizer = load_tokenizer(source, trust_remote_code)
        model = load_model("AutoModelForSequenceClassification", source, trust_remote_code, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model.to(device).eval().requires_grad_(False), tokenizer, name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list, completions: list) -> list[list[int]]:
        if prompts and not isinstance(prompts[0], str):
            if not getattr(self.tokenizer, "chat_template", None):
                raise ConfigError(
                    f"Reward model '{self.name}' is asked to score conversations, but its tokenizer has no "
                    "chat template; train it on conversational preferences (or set the reward stage's "
                    "chat_template) so it is saved with one."
                )
            return [conversation_ids(self.tokenizer, p + c) for p, c in zip(prompts, completions)]
        if is_encoder_classifier(self.model):
            # as TRL's RewardTrainer formats it: EOS appended as text, then the tokenizer adds [CLS] ... [SEP]
            eos = self.tokenizer.eos_token
            texts = [p + c if (p + c).endswith(eos) else p + c + eos for p, c in zip(prompts, completions)]
            # an encoder has absolute positions: cut a text longer than it can read (keeping [CLS] and [SEP])
            limit = getattr(self.model.config, "max_position_embeddings", None)
            return self.tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)
        return [ids if ids and ids[-1] == eos else ids + [eos] for ids in encoded["input_ids"]]

    def score_texts(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        return self.score_ids(self.encode(prompts, completions))

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> torch.Tensor:
        """Score token sequences (each ends at its real last token); returns [N] float32 on the CPU."""
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            scores.append(
                sequence_scores(self.model, ids.to(self.device), mask.to(self.device)).float().cpu()
            )
        return torch.cat(scores)

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> torch.Tensor:
        return self.score_texts(prompts, completions)
