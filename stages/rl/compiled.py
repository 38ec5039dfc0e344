"""The `compiled` rollout engine: our sampling loop over a static KV cache with a compiled decode step.

The `hf` loop's per-token cost at small and middle sizes is Python and kernel launches, not arithmetic:
the cache grows by concatenation, the attention mask is rebuilt, and every layer's small kernels launch one
by one. Here the cache is allocated once for the whole response (`StaticCache`), prompts are left-padded to
`max_prompt_length`, and the attention mask covers the whole cache from the start, so every decode step
has the same shapes and `torch.compile` traces it once (on a GPU, "reduce-overhead" replays it as a CUDA
graph). The prefill runs eagerly. Sampling is the `hf` loop's: the same counter-based noise, the same
temperature, the same stop rule, so it draws the same tokens up to float rounding of the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.models import position_ids_from_mask, without_peft_wrapper
from stages.rl.rollout import Rollout, draw_token, finished_rollout


class CompiledEngine:
    name, exact = "compiled", True

    def __init__(self, prompt_width: int | None = None):
        self.prompt_width = prompt_width  # left-pad every batch to this width: one shape, one compile
        self.steps: dict[int, object] = {}  # a compiled decode step per model

    def decode_step(self, model: torch.nn.Module):
        if id(model) not in self.steps:
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else None
            self.steps[id(model)] = torch.compile(model, mode=mode, dynamic=False)
        return self.steps[id(model)]

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, query_ids: Tensor, query_mask: Tensor, request) -> Rollout:
        from transformers import StaticCache

        if request.synced:
            raise ValueError("the compiled engine generates with a whole model, not a sharded one")
        query_ids, query_mask = pad_left(query_ids, query_mask, self.prompt_width, request.pad_token_id)
        batch, width = query_ids.shape
        total = width + request.max_new_tokens
        device = query_ids.device
        cache = StaticCache(config=model.config, max_cache_len=total)
        attention = torch.zeros(batch, total, dtype=torch.long, device=device)
        attention[:, :width] = query_mask.long()
        positions = position_ids_from_mask(attention[:, :width])
        cache_argument = cache_keyword(model)
        output = model(
            input_ids=query_ids,
            attention_mask=attention,
            position_ids=positions,
            **{cache_argument: cache},
            cache_position=torch.arange(width, device=device),
            use_cache=True,
        )
        logits = output.logits[:, -1]
        step = self.decode_step(model)
        stops = torch.tensor(list(request.stop_token_ids), device=device)
        next_position = positions[:, -1:] + 1
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens, drawn = [], []
        for t in range(request.max_new_tokens):
            token, logprob = draw_token(
                logits, t, request.temperature, request.greedy, request.noise, request.generator
            )
            token = torch.where(done, torch.full_like(token, request.pad_token_id), token)
            tokens.append(token)
            drawn.append(logprob)
            done |= torch.isin(token, stops)
            if bool(done.all()) or t + 1 == request.max_new_tokens:
                break
            attention[:, width + t] = 1
            logits = step(
                input_ids=token[:, None],
                attention_mask=attention,
                position_ids=next_position,
                **{cache_argument: cache},
                cache_position=torch.tensor([width + t], device=device),
                use_cache=True,
            ).logits[:, -1]
            next_position = next_position + 1
        response, logprobs = torch.stack(tokens, dim=1), torch.stack(drawn, dim=1)
        return finished_rollout(
            query_ids, query_mask, response, logprobs, request.stop_token_ids, request.pad_token_id
        )


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward's name for the KV cache: `cache` in recent transformers (`past_key_values` deprecated),
    `past_key_values` before."""
    import inspect

    forward = without_peft_wrapper(model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def pad_left(ids: Tensor, mask: Tensor, width: int | None, pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad a batch to `width` columns (no change if None or already that wide)."""
    if width is None or ids.shape[1] >= width:
        return ids, mask
    extra = width - ids.shape[1]
    return (
        torch.nn.functional.pad(ids, (extra, 0), value=pad_id),
        torch.nn.functional.pad(mask, (extra, 0), value=0),
    )
