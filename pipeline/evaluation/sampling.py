"""Sampling a policy for the evaluation: its completions on the evaluation prompts through the configured
rollout engine, with each sample's KL to the reference and its NLL under it (for perplexity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from pipeline.chat import render_prompt, use_template
from pipeline.evaluation.config import EvaluationConfig
from pipeline.models import load_model, load_tokenizer
from stages.rl.generation import GenerationRequest, make_engine
from stages.rl.rollout import batched_response_logprobs, left_pad


@dataclass
class PolicySamples:
    completions: list[str]  # prompt-major: prompt i, sample j at i * samples_per_prompt + j
    lengths: list[int]  # response tokens, stop token included
    # Both None when the policy's vocabulary differs from the reference's (token log-probs do not compare):
    kl: list[float] | None  # sum over response tokens of log pi - log pi_ref at the sampling temperature
    reference_nll: list[float] | None  # -sum log pi_ref(y_t) at temperature 1: perplexity's numerator


class Reference:
    """The KL / perplexity reference, loaded once and shared by every policy."""

    def __init__(self, source: str, device: str):
        self.source, self.device = source, device
        self.tokenizer = load_tokenizer(source)
        self.model = load_model("AutoModelForCausalLM", source).to(device).eval()

    def compatible(self, tokenizer) -> bool:
        return tokenizer.get_vocab() == self.tokenizer.get_vocab()


def sample_policy(
    source: str, reference: Reference, prompts: list, cfg: EvaluationConfig, seed: int, desc: str
) -> PolicySamples:
    """Sample `samples_per_prompt` completions per prompt with a fixed generator seed, through the configured
    rollout engine. A conversational prompt is rendered by this policy's own chat template, with its
    generation prompt."""
    device = reference.device
    tokenizer = load_tokenizer(source)
    if cfg.chat_template or any(not isinstance(p, str) for p in prompts):
        use_template(tokenizer, cfg.chat_template, source, f"Evaluation prompts '{cfg.prompts}'")
    prompts = [p if isinstance(p, str) else render_prompt(tokenizer, p) for p in prompts]
    stop_ids = (
        tokenizer.convert_tokens_to_ids([cfg.stop_token]) if cfg.stop_token else [tokenizer.eos_token_id]
    )
    if source == reference.source:
        policy = reference.model
    else:
        policy = load_model("AutoModelForCausalLM", source).to(device).eval()
    comparable = reference.compatible(tokenizer)
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    encoded = tokenizer(repeated, add_special_tokens=False)["input_ids"]
    engine = make_engine(cfg.rollout.engine, max(map(len, encoded), default=None))
    out = PolicySamples([], [], [] if comparable else None, [] if comparable else None)
    for start in tqdm(range(0, len(repeated), cfg.batch_size), desc=desc, leave=False):
        batch = encoded[start : start + cfg.batch_size]
        query_ids, query_mask = left_pad(batch, tokenizer.pad_token_id, device)
        request = GenerationRequest(
            cfg.max_new_tokens,
            cfg.temperature,
            stop_ids,
            tokenizer.pad_token_id,
            generator=generator,
            seed=seed + start,
        )
        rollout = engine.generate(policy, query_ids, query_mask, request)
        mask = rollout.response_mask
        out.lengths += mask.sum(1).long().tolist()
        out.completions += tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        if not comparable:
            continue
        logprobs = batched_response_logprobs(policy, rollout, cfg.temperature, cfg.batch_size)
        ref_logprobs = batched_response_logprobs(reference.model, rollout, cfg.temperature, cfg.batch_size)
        out.kl += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
        # Perplexity is the reference's own judgement of the text, so at temperature 1.
        if cfg.temperature != 1.0:
            ref_logprobs = batched_response_logprobs(reference.model, rollout, 1.0, cfg.batch_size)
        out.reference_nll += (-(ref_logprobs * mask).sum(1)).tolist()
    return out
