"""Batched sampling with the KV cache, and the log-probabilities of sampled responses.

Our own loop rather than `generate`: it stops as soon as every row has hit a stop token, takes any set of
stop tokens, and uses exactly the positions and temperature that `response_logprobs` later scores with,
so the policy's sampling and scoring distributions agree (KL to an identical reference is exactly zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline import distributed
from pipeline.errors import ConfigError, UserError
from pipeline.models import position_ids_from_mask
from stages.rl.masking import response_mask
from stages.rl.noise import SamplingNoise


@dataclass
class Rollout:
    query_ids: Tensor  # [B, P] left-padded prompts
    query_mask: Tensor  # [B, P]
    response_ids: Tensor  # [B, R] tokens after the first stop token replaced by pad
    response_mask: Tensor  # [B, R] float, 1 up to and including the stop token
    last_index: Tensor  # [B] index of each response's real last token
    ended: Tensor  # [B] whether the response produced a stop token
    # [B, R] log-probability of each response token under the distribution the sampler drew it from (0 on
    # padding): compared with the trainer's own recomputation to measure the sampler-trainer mismatch
    sampler_logprobs: Tensor | None = None

    @property
    def sequence_ids(self) -> Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def sequence_mask(self) -> Tensor:
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    query_ids: Tensor,
    query_mask: Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    noise: SamplingNoise | None = None,
    synced: bool = False,
) -> Rollout:
    """Ancestral sampling of up to `max_new_tokens` per prompt, one forward pass per token over the cache.
    `synced` (a sharded model): decoding goes on until every process is done, since each forward is a
    collective the others wait on; a process already done feeds padding."""
    batch = query_ids.shape[0]
    stops = torch.tensor(list(stop_token_ids), device=query_ids.device)
    attention = query_mask.long()
    positions = position_ids_from_mask(attention)
    output = model(input_ids=query_ids, attention_mask=attention, position_ids=positions, use_cache=True)
    next_position = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=query_ids.device)
    tokens, sampler_logprobs = [], []
    for t in range(max_new_tokens):
        token, logprob = draw_token(output.logits[:, -1], t, temperature, greedy, noise, generator)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        sampler_logprobs.append(logprob)
        done |= torch.isin(token, stops)
        finished = bool(done.all())
        if distributed.all_true(finished) if synced else finished:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        output = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_position,
            use_cache=True,
            **cache_of(output),
        )
        next_position = next_position + 1
    response, drawn = torch.stack(tokens, dim=1), torch.stack(sampler_logprobs, dim=1)
    return finished_rollout(query_ids, query_mask, response, drawn, stop_token_ids, pad_token_id)


def draw_token(
    logits: Tensor,
    t: int,
    temperature: float,
    greedy: bool = False,
    noise: SamplingNoise | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Token t of each row from its last position's logits [B, V], and its log-probability under the
    tempered distribution it was drawn from: the greedy one (ReMax's baseline), Gumbel-max with `noise`
    (the same distribution as multinomial sampling), or multinomial with `generator`."""
    scaled = logits.float() / temperature
    if greedy:
        token = scaled.argmax(-1)
    elif noise is not None:
        token = (scaled + noise.gumbel(t, *scaled.shape, scaled.device)).argmax(-1)
    else:
        token = torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator).squeeze(1)
    return token, torch.log_softmax(scaled, dim=-1).gather(1, token[:, None]).squeeze(1)


def finished_rollout(
    query_ids: Tensor,
    query_mask: Tensor,
    response: Tensor,
    drawn: Tensor,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
) -> Rollout:
    """A Rollout from generated tokens [B, R] and their sampler log-probabilities: everything after each
    row's first stop token replaced by padding and masked out (its log-probabilities set to 0)."""
    mask, last_index, ended = response_mask(response, stop_token_ids)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_token_id))
    return Rollout(query_ids, query_mask.long(), response, mask, last_index, ended, drawn * mask)


def cache_of(output) -> dict:
    """The KV cache to pass back: recent transformers call it `cache`, older `past_key_values`."""
    if getattr(output, "cache", None) is not None:
        return {"cache": output.cache}
    return {"past_key_values": output.past_key_values}


def response_logits(
    model: torch.nn.Module, sequence_ids: Tensor, sequence_mask: Tensor, query_length: int
) -> Tensor:
    """Logits that predict each response token: [B, R, V] (position t-1 predicts token t)."""
    output = model(
        input_ids=sequence_ids,
        attention_mask=sequence_mask,
        position_ids=position_ids_from_mask(sequence_mask),
        use_cache=False,
    )
    return output.logits[:, query_length - 1 : -1]


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log pi(token) under the tempered distribution the tokens were sampled from: [B, R]."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def batched_response_logprobs(
    model: torch.nn.Module, rollout: Rollout, temperature: float, batch_size: int
) -> Tensor:
    """No-grad log-probabilities of a whole rollout, in chunks to bound memory."""
    ids, mask, width = rollout.sequence_ids, rollout.sequence_mask, rollout.query_ids.shape[1]
    chunks = []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            part = slice(start, start + batch_size)
            logits = response_logits(model, ids[part], mask[part], width)
            chunks.append(token_logprobs(logits, rollout.response_ids[part], temperature))
    return torch.cat(chunks)


def response_logits_and_values(
    policy: torch.nn.Module,
    value_head: torch.nn.Module,
    sequence_ids: Tensor,
    sequence_mask: Tensor,
    width: int,
) -> tuple[Tensor, Tensor]:
    """One forward of the policy for both: logits that predict each response token [B, R, V] and the shared
    value head's V(s_t) on the last hidden state at the token before each [B, R]. The policy is called whole
    (a sharded one gathers its weights in its own forward; a family's logit soft-capping applies), and its
    output layer runs on the response positions only (`logits_to_keep`)."""
    output = policy(
        input_ids=sequence_ids,
        attention_mask=sequence_mask,
        position_ids=position_ids_from_mask(sequence_mask),
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=sequence_ids.shape[1] - width + 1,  # positions width-1 .. end
    )
    hidden = output.hidden_states[-1][:, width - 1 : -1]
    return output.logits[:, :-1], value_head(hidden)


def batched_logprobs_and_values(
    policy: torch.nn.Module,
    value_head: torch.nn.Module,
    rollout: Rollout,
    temperature: float,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """`batched_response_logprobs` and the shared value head's values from the same no-grad forwards."""
    ids, mask, width = rollout.sequence_ids, rollout.sequence_mask, rollout.query_ids.shape[1]
    logprobs, values = [], []
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            part = slice(start, start + batch_size)
            logits, part_values = response_logits_and_values(policy, value_head, ids[part], mask[part], width)
            logprobs.append(token_logprobs(logits, rollout.response_ids[part], temperature))
            values.append(part_values.float())
    return torch.cat(logprobs), torch.cat(values)


def encode_prompts(
    tokenizer, prompts: list[str], max_length: int, source: str = "prompts"
) -> list[list[int]]:
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    for row, ids in enumerate(encoded, start=1):
        if len(ids) > max_length:
            raise UserError(
                f"{source}, row {row}: the prompt is {len(ids)} tokens, longer than max_prompt_length="
                f"{max_length} (raise max_prompt_length or shorten it): {prompts[row - 1][:80]!r}"
            )
    return encoded


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def stop_token_ids(tokenizer, stop_token: str | None) -> list[int]:
    if not stop_token:
        return [tokenizer.eos_token_id]
    ids = tokenizer.convert_tokens_to_ids([stop_token])
    if ids[0] in (None, tokenizer.unk_token_id):
        raise ConfigError(f"stop_token {stop_token!r} is not a single token of the policy's tokenizer.")
    return ids
