"""The RL stage's reward: a weighted sum of learned reward models and `module:function` rewards, with
optional clipping and running normalisation. Learned models that share the policy's tokenizer score the
sampled token ids directly; any other model gets the decoded text, re-tokenized with its own tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline import distributed
from pipeline.chat import reward_inputs
from reward_models import FunctionReward
from reward_models.learned import LearnedRewardModel
from stages.rl.rollout import Rollout


@dataclass
class RewardSource:
    name: str
    weight: float
    scorer: LearnedRewardModel | FunctionReward
    same_tokenizer: bool = False


class RunningMoments:
    """Running mean/std over all scores seen (Chan et al.'s parallel update), for reward normalisation."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add the (weighted) batch of every process: one all-reduce of its count, sum and sum of squares."""
        weight = torch.ones_like(x) if weight is None else weight.to(x)
        sums = distributed.all_sum(
            torch.stack([weight.sum(), (weight * x).sum(), (weight * x * x).sum()]).double()
        )
        n = int(sums[0])
        if n == 0:
            return
        mean = float(sums[1] / n)
        delta = mean - self.mean
        total = self.count + n
        self.m2 += float(sums[2] - n * mean**2) + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / max(self.count - 1, 1)) ** 0.5

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def penalize_unfinished(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that never produced a stop token (None: off)."""
    return scores if penalty is None else torch.where(ended, scores, scores - penalty)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), as an amount to subtract from the score:

    0 for |y| <= L_max - L_cache; penalty * (|y| - (L_max - L_cache)) / L_cache above, reaching `penalty`
    at L_max (|y| cannot exceed L_max = max_new_tokens here). L_cache = `buffer`."""
    excess = (lengths.float() - (max_length - buffer)).clamp(min=0)
    return penalty * (excess / buffer).clamp(max=1.0)


class RewardMix:
    def __init__(self, sources: list[RewardSource], clip: float | None, normalize: bool):
        self.sources, self.clip, self.normalize = sources, clip, normalize
        self.moments = RunningMoments()
        self.conversations: dict[str, list[dict]] = {}  # rendered prompt -> the messages it came from

    def add_conversations(self, rendered: list[str], prompts: list) -> None:
        """Remember the messages behind each rendered conversational prompt (plain prompts are skipped)."""
        self.conversations.update({r: p for r, p in zip(rendered, prompts) if not isinstance(p, str)})

    def inputs(self, prompts: list[str], completions: list[str]) -> tuple[list, list]:
        """What reward functions and text-scored models receive: a conversational prompt as its messages with
        each completion as an assistant turn (TRL's convention), a plain prompt as it is."""
        if prompts and prompts[0] in self.conversations:
            return reward_inputs([self.conversations[p] for p in prompts], completions)
        return prompts, completions

    def score(
        self,
        rollout: Rollout,
        prompts: list[str],
        completions: list[str],
        eos_id: int,
        update: bool = True,
        weight: torch.Tensor | None = None,
    ) -> dict:
        """{'total': [B] tensor, <source name>: [B] raw scores} on the CPU. `update=False` leaves the running
        normalisation statistics alone (evaluation snapshots must not shift training's scale)."""
        parts = {}
        reward_prompts, reward_completions = self.inputs(prompts, completions)
        # a conversation is scored re-rendered whole by the template, as the reward model was trained on it
        by_ids = reward_prompts is prompts
        for source in self.sources:
            if isinstance(source.scorer, LearnedRewardModel) and source.same_tokenizer and by_ids:
                parts[source.name] = source.scorer.score_ids(rollout_sequences(rollout, eos_id))
            else:
                parts[source.name] = source.scorer(reward_prompts, reward_completions).float().cpu()
        total = sum(source.weight * parts[source.name] for source in self.sources)
        if self.clip is not None:
            total = total.clamp(-self.clip, self.clip)
        if self.normalize:
            if update:
                self.moments.update(total, weight)
            total = (total - self.moments.mean) / (self.moments.std + 1e-8)
        return {"total": total, **parts}


def rollout_sequences(rollout: Rollout, eos_id: int) -> list[list[int]]:
    """Prompt + response up to its real last token, ending in EOS as in reward training (TRL appends one)."""
    sequences = []
    for row in range(rollout.query_ids.shape[0]):
        query = rollout.query_ids[row][rollout.query_mask[row].bool()].tolist()
        response = rollout.response_ids[row, : int(rollout.last_index[row]) + 1].tolist()
        if response[-1] != eos_id:
            response.append(eos_id)
        sequences.append(query + response)
    return sequences


def build_reward_mix(
    reward_model: str | None,
    reward_model_weight: float,
    functions: dict[str, float],
    policy_tokenizer,
    device,
    clip: float | None,
    normalize: bool,
    trust_remote_code: bool = False,
) -> RewardMix:
    """`reward_model`: resolved path or hub id (or None); `functions`: module:function -> weight."""
    sources = []
    if reward_model:
        model = LearnedRewardModel.load(reward_model, device=device, trust_remote_code=trust_remote_code)
        same = model.tokenizer.get_vocab() == policy_tokenizer.get_vocab()
        sources.append(RewardSource("reward_model", reward_model_weight, model, same))
    for spec, weight in functions.items():
        sources.append(RewardSource(spec, weight, FunctionReward(spec)))
    return RewardMix(sources, clip, normalize)
