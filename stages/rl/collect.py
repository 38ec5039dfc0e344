"""Collecting one step's rollouts: each process's prompts of the global batch, sampled and scored; with DAPO's
dynamic sampling, groups whose rewards are all equal (no learning signal) replaced by groups of fresh prompts.

Every process runs the same number of sampling rounds (decided by a sum over processes), so none waits on a
collective the others never reach.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline import distributed
from stages.rl.rollout import Rollout


class PromptStream:
    """Prompts in a fresh seeded shuffle each pass, so a batch never repeats within a pass."""

    def __init__(self, prompts: list[str], seed: int):
        self.prompts, self.rng, self.queue, self.batches = prompts, random.Random(seed), [], 0

    def next_batch(self, size: int) -> list[str]:
        while len(self.queue) < size:
            order = list(self.prompts)
            self.rng.shuffle(order)
            self.queue.extend(order)
        batch, self.queue = self.queue[:size], self.queue[size:]
        self.batches += 1
        return batch

    def fast_forward(self, batches: int, size: int) -> None:
        """Replay the draws of an interrupted run (cheap and exact: the stream is seeded)."""
        for _ in range(batches):
            self.next_batch(size)


def local_prompts(batch: list[str], group_size: int) -> tuple[list[str], Tensor, slice]:
    """This process's prompts of the global batch (whole groups), their row weights, and their rows'
    position in the global batch. A process left without prompts gets one placeholder group of weight 0,
    so it still takes part in every collective."""
    part = distributed.shard(len(batch))
    mine = batch[part]
    weight = 1.0 if mine else 0.0
    rows = [p for p in (mine or batch[:1]) for _ in range(group_size)]
    return rows, torch.full((len(rows),), weight), slice(part.start * group_size, part.stop * group_size)


@dataclass
class Collected:
    """This process's rows of one step's global batch, sampled and scored."""

    prompts: list[str]  # one per row
    rollout: Rollout
    scores: Tensor  # [B] total score, penalties included
    parts: dict[str, Tensor]  # [B] each reward source's score, and "total"
    row_weight: Tensor  # [B] 0 for placeholder rows and for groups dropped without signal
    rows: slice  # position in the global batch
    stats: dict[str, float] = field(default_factory=dict)


SampleAndScore = Callable[[list[str], Tensor, int], tuple[Rollout, Tensor, dict[str, Tensor]]]


def groups_without_signal(scores: Tensor, group_size: int, tolerance: float = 1e-6) -> Tensor:
    """[n_groups] True where every sample of the prompt got the same score: the group-relative advantage is
    0 for each of them, so the group teaches nothing (DAPO's dynamic sampling drops it)."""
    grouped = scores.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) <= tolerance


def collect(
    stream: PromptStream,
    pad_id: int,
    batch_size: int,
    group_size: int,
    sample_and_score: SampleAndScore,
    dynamic_sampling: bool,
    max_rounds: int,
) -> Collected:
    """Round 0 samples this process's prompts of the next global batch. With `dynamic_sampling`, each further
    round (at most `max_rounds`) draws another global batch of prompts, samples this process's share, and
    puts its groups with signal in the place of groups without; groups still without signal after the last
    round stay in the batch with weight 0. `sample_and_score(prompts, row_weight, round)` samples and
    scores."""
    prompts, row_weight, rows = local_prompts(stream.next_batch(batch_size), group_size)
    rollout, scores, parts = sample_and_score(prompts, row_weight, 0)
    if not dynamic_sampling:
        return Collected(prompts, rollout, scores, parts, row_weight, rows)
    real = row_weight.view(-1, group_size)[:, 0] > 0
    empty = (groups_without_signal(scores, group_size) & real).tolist()
    global_groups, first_empty = distributed.all_sum(
        torch.tensor([float(real.sum()), float(sum(empty))])
    ).tolist()
    sources = [(0, group) for group in range(len(empty))]  # (round, group) that fills each slot
    rounds = [(prompts, rollout, scores, parts)]
    for round_index in range(1, max_rounds + 1):
        if distributed.all_sum(torch.tensor(float(sum(empty)))).item() == 0:
            break
        candidate_prompts, candidate_weight, _ = local_prompts(stream.next_batch(batch_size), group_size)
        sampled = sample_and_score(candidate_prompts, candidate_weight, round_index)
        rounds.append((candidate_prompts, *sampled))
        useful = ~groups_without_signal(sampled[1], group_size) & (
            candidate_weight.view(-1, group_size)[:, 0] > 0
        )
        fresh = iter(torch.nonzero(useful).flatten().tolist())
        for slot, is_empty in enumerate(empty):
            if is_empty and (group := next(fresh, None)) is not None:
                sources[slot], empty[slot] = (round_index, group), False
    picks = [(r, g * group_size + i) for r, g in sources for i in range(group_size)]
    weight = row_weight.clone()
    for slot, is_empty in enumerate(empty):
        if is_empty:
            weight[slot * group_size : (slot + 1) * group_size] = 0.0
    unfilled = distributed.all_sum(torch.tensor(float(sum(empty)))).item()
    stats = {
        "groups_without_signal": first_empty / max(global_groups, 1.0),
        "sampling_rounds": float(len(rounds)),
        "groups_dropped": unfilled / max(global_groups, 1.0),
    }
    if len(rounds) == 1:  # nothing to merge: round 0's rows, some perhaps dropped
        return Collected(prompts, rollout, scores, parts, weight, rows, stats)
    return Collected(
        [rounds[r][0][row] for r, row in picks],
        merge_rows([rounds[r][1] for r in range(len(rounds))], picks, pad_id),
        torch.stack([rounds[r][2][row] for r, row in picks]),
        {key: torch.stack([rounds[r][3][key][row] for r, row in picks]) for key in parts},
        weight,
        rows,
        stats,
    )


def merge_rows(rollouts: list[Rollout], picks: list[tuple[int, int]], pad_id: int) -> Rollout:
    """A rollout made of row `row` of `rollouts[r]` for each (r, row) in `picks`: prompts left-padded and
    responses right-padded with `pad_id` to the widest of them (padding masked out, as everywhere)."""
    query_width = max(r.query_ids.shape[1] for r in rollouts)
    response_width = max(r.response_ids.shape[1] for r in rollouts)

    def aligned(rollout: Rollout) -> Rollout:
        left = (query_width - rollout.query_ids.shape[1], 0)
        right = (0, response_width - rollout.response_ids.shape[1])
        pad = torch.nn.functional.pad
        return Rollout(
            pad(rollout.query_ids, left, value=pad_id),
            pad(rollout.query_mask, left, value=0),
            pad(rollout.response_ids, right, value=pad_id),
            pad(rollout.response_mask, right, value=0.0),
            rollout.last_index,
            rollout.ended,
            None if rollout.sampler_logprobs is None else pad(rollout.sampler_logprobs, right, value=0.0),
        )

    same_width = [aligned(r) for r in rollouts]

    def picked(name: str) -> Tensor | None:
        if getattr(same_width[0], name) is None:
            return None
        return torch.stack([getattr(same_width[r], name)[row] for r, row in picks])

    return Rollout(*(picked(f.name) for f in dataclasses.fields(Rollout)))
