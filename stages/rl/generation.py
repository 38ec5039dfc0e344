"""Rollout engines: what turns a batch of prompts into responses, behind one interface.

Every engine takes left-padded prompt ids and a `GenerationRequest` and hands back a `Rollout`: responses
right-padded with the pad id, cut after the first stop token, with their mask, and the log-probability each
token had under the distribution the engine drew it from (`sampler_logprobs`). The trainer always
recomputes the log-probabilities it learns from (stages/rl/experience.py); comparing the two measures how far
the sampler is from the trainer (stages/rl/mismatch.py), and truncated importance sampling corrects for it.

- `hf`: our loop over the KV cache (stages/rl/rollout.py `sample`). Exact: it samples from the trainer's own
  forward, with counter-based noise, so 1 and N processes draw the same tokens. The default.
- `compiled`: the `hf` loop over a static KV cache with a compiled decode step (stages/rl/compiled.py).
  Exact up to float rounding; one compile per batch shape (prompts are left-padded to
  `max_prompt_length` so that the RL stage's batches share one), then no per-token Python or launch
  overhead to speak of.
- `paged`: transformers' continuous batching (`generate_batch`: paged KV cache, a scheduler that refills
  finished rows with waiting prompts). No extra dependency. Its per-step scheduling costs dominate at small
  sizes (a CPU engine it is not, see docs/benchmarks.md); it draws with its own seeded RNG, so its samples
  depend on the process count.

A new engine (vLLM, see docs/design.md) is one more class here with the same `generate`, registered in
ENGINES.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from stages.rl.compiled import CompiledEngine
from stages.rl.noise import SamplingNoise
from stages.rl.rollout import Rollout, finished_rollout, sample


@dataclass
class GenerationRequest:
    """What to generate, the same for every engine."""

    max_new_tokens: int
    temperature: float
    stop_token_ids: Sequence[int]
    pad_token_id: int
    greedy: bool = False
    noise: SamplingNoise | None = None  # hf: counter-based noise (RL)
    generator: torch.Generator | None = None  # hf without noise: a seeded generator (evaluation)
    seed: int = 0  # engines with an RNG of their own
    synced: bool = False  # the model is sharded: every process must keep stepping until all are done


class RolloutEngine(Protocol):
    name: str
    exact: bool  # samples from the trainer's own forward pass: no importance correction needed

    def generate(
        self, model: torch.nn.Module, query_ids: Tensor, query_mask: Tensor, request: GenerationRequest
    ) -> Rollout: ...


class HFEngine:
    name, exact = "hf", True

    def generate(
        self, model: torch.nn.Module, query_ids: Tensor, query_mask: Tensor, request: GenerationRequest
    ) -> Rollout:
        return sample(
            model,
            query_ids,
            query_mask,
            request.max_new_tokens,
            request.temperature,
            request.stop_token_ids,
            request.pad_token_id,
            generator=request.generator,
            greedy=request.greedy,
            noise=request.noise,
            synced=request.synced,
        )


class PagedEngine:
    """transformers' continuous batching. Sampling is over the whole tempered distribution (no top-k or
    top-p), as the trainer scores it; the engine's own log-probabilities come back with the tokens."""

    name, exact = "paged", False

    def generate(
        self, model: torch.nn.Module, query_ids: Tensor, query_mask: Tensor, request: GenerationRequest
    ) -> Rollout:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if request.synced:
            raise ValueError("the paged engine generates with a whole model, not a sharded one")
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(query_ids, query_mask)]
        config = GenerationConfig(
            max_new_tokens=request.max_new_tokens,
            do_sample=not request.greedy,
            temperature=request.temperature if not request.greedy else None,
            top_k=None,
            top_p=None,
            eos_token_id=list(request.stop_token_ids),
            pad_token_id=request.pad_token_id,
        )
        batching = ContinuousBatchingConfig(
            return_logprobs=True, seed=request.seed, **cache_size(prompts, request.max_new_tokens)
        )
        # a peft wrapper hands generate_batch to its base model, whose layers hold the adapter
        outputs = model.generate_batch(
            prompts, generation_config=config, continuous_batching_config=batching, progress_bar=False
        )
        ordered = sorted(outputs.values(), key=lambda out: int(out.request_id.rsplit("_", 1)[-1]))
        return rollout_from_lists(
            query_ids,
            query_mask,
            [out.generated_tokens for out in ordered],
            [out.logprobs for out in ordered],
            request,
        )


PAGE_TOKENS = 16
MAX_BATCH_TOKENS = 8192


def cache_size(prompts: list[list[int]], max_new_tokens: int) -> dict[str, int]:
    """A paged cache just large enough for every request at once (prompt + max_new_tokens each), and at
    most MAX_BATCH_TOKENS tokens per forward. Left to itself, transformers sizes the cache from the
    device's free memory: on a CPU that took 100 s to set up for 16 short prompts."""
    blocks = sum(-(-(len(p) + max_new_tokens) // PAGE_TOKENS) for p in prompts)
    prefill = sum(len(p) for p in prompts)
    return {
        "page_size": PAGE_TOKENS,
        "num_blocks": blocks + 1,
        "max_batch_tokens": max(min(prefill, MAX_BATCH_TOKENS), len(prompts)),
    }


def rollout_from_lists(
    query_ids: Tensor,
    query_mask: Tensor,
    tokens: list[list[int]],
    logprobs: list[list[float]],
    request: GenerationRequest,
) -> Rollout:
    """A Rollout from per-prompt token and log-probability lists of any lengths (at least one token each)."""
    width = max(1, max(len(row) for row in tokens))
    response = torch.full((len(tokens), width), request.pad_token_id, dtype=torch.long)
    drawn = torch.zeros(len(tokens), width)
    for i, (row, row_logprobs) in enumerate(zip(tokens, logprobs)):
        response[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        drawn[i, : len(row_logprobs)] = torch.tensor(row_logprobs, dtype=torch.float32)
    response, drawn = response.to(query_ids.device), drawn.to(query_ids.device)
    return finished_rollout(
        query_ids, query_mask, response, drawn, request.stop_token_ids, request.pad_token_id
    )


ENGINES: dict[str, type] = {"hf": HFEngine, "compiled": CompiledEngine, "paged": PagedEngine}


def make_engine(name: str, prompt_width: int | None = None) -> RolloutEngine:
    """`prompt_width`: the widest prompt the engine will see (the compiled engine pads every batch to it)."""
    return CompiledEngine(prompt_width) if name == "compiled" else ENGINES[name]()
