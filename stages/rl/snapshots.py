"""Evaluation snapshots during RL: the policy sampled on held-out prompts every `eval_every` steps and scored
by the proxy reward(s) and, when given, a gold scorer — the data behind reward-vs-step curves, the
reward-KL frontier and the over-optimisation check. Each snapshot can keep the policy's weights."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from reward_models import FunctionReward
from stages.rl.kl import masked_kl
from stages.rl.rewards import RewardMix
from stages.rl.rollout import batched_response_logprobs, sample

FOLDER = "snapshots"
SNAPSHOTS_FILE = "snapshots.json"  # the records, published in the stage's folder


class Snapshotter:
    def __init__(
        self,
        prompts: list[str],
        encoded: list[list[int]],
        gold: str | None,
        rewards: RewardMix,
        tokenizer,
        sampling: dict,
        work_dir: Path,
        seed: int,
        save: Callable[[torch.nn.Module, object, Path], None] | None,
    ):
        """`save(policy, tokenizer, folder)` keeps each snapshot's weights (None: none kept)."""
        self.prompts, self.encoded, self.rewards, self.tokenizer = prompts, encoded, rewards, tokenizer
        self.gold = FunctionReward(gold) if gold else None
        self.sampling, self.folder, self.seed, self.save = sampling, work_dir / FOLDER, seed, save
        self.records: list[dict] = []

    @torch.no_grad()
    def take(self, step: int, episodes: int, policy, reference_context, pad_left) -> dict:
        """Sample one response per held-out prompt with the same seed every time, so snapshots compare."""
        query_ids, query_mask = pad_left(self.encoded)
        generator = torch.Generator(device=query_ids.device).manual_seed(self.seed)
        rollout = sample(policy, query_ids, query_mask, generator=generator, **self.sampling)
        temperature = self.sampling["temperature"]
        logprobs = batched_response_logprobs(policy, rollout, temperature, len(self.prompts))
        with reference_context() as reference:
            ref_logprobs = batched_response_logprobs(reference, rollout, temperature, len(self.prompts))
        completions = self.tokenizer.batch_decode(rollout.response_ids, skip_special_tokens=True)
        scored = self.rewards.score(
            rollout, self.prompts, completions, self.tokenizer.eos_token_id, update=False
        )
        rewards = {name: float(values.mean()) for name, values in scored.items() if name != "total"}
        if self.gold is not None:
            rewards["gold"] = float(self.gold(*self.rewards.inputs(self.prompts, completions)).mean())
        record = {
            "step": step,
            "episodes": episodes,
            "rewards": rewards,
            "kl": float(masked_kl(logprobs, ref_logprobs, rollout.response_mask, "k1").sum(1).mean()),
            "response_length": float(rollout.response_mask.sum(1).mean()),
            "path": None,
        }
        if self.save is not None:
            path = self.folder / f"step-{step:06d}"
            self.save(policy, self.tokenizer, path)
            record["path"] = f"{FOLDER}/{path.name}"
        self.records.append(record)
        return record

    def publish(self, out_dir: Path) -> list[dict]:
        """Move the saved weights into the stage's output folder (they survive a resume in the work dir)."""
        if self.folder.is_dir():
            shutil.move(str(self.folder), str(out_dir / FOLDER))
        return self.records
