"""Everything an RL step depends on, saved so that a resumed run continues exactly where it stopped:
trainable weights (safetensors), optimizer, RNG, and the run's `RLState` (step, history, KL controller,
prompt position, running baseline, reward statistics, snapshot records) as one object. Sampling noise and
minibatch order are seeded by step, so they need no state."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from pipeline import distributed
from pipeline.checkpoints import latest_valid, prune, write_index
from pipeline.errors import UserError
from pipeline.faults import crash_point
from stages.rl.advantages import RunningMeanBaseline
from stages.rl.collect import PromptStream
from stages.rl.kl import AdaptiveKLController, FixedKLController
from stages.rl.rewards import RunningMoments


@dataclass
class RLState:
    """What an RL run changes besides weights and optimizer, saved and restored as one."""

    stream: PromptStream
    kl: AdaptiveKLController | FixedKLController
    running: RunningMeanBaseline
    reward_moments: RunningMoments
    batch_size: int  # prompts drawn per stream batch (to replay the stream's draws)
    step: int = 0  # the last finished step
    history: list[dict] = field(default_factory=list)  # one row per finished step
    snapshots: list[dict] = field(default_factory=list)  # evaluation snapshot records

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "history": self.history,
            "snapshots": self.snapshots,
            "prompt_batches": self.stream.batches,
            "kl_controller": self.kl.state_dict(),
            "running_baseline": self.running.state_dict(),
            "reward_moments": self.reward_moments.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history, self.snapshots = state["step"], state["history"], state["snapshots"]
        self.stream.fast_forward(state["prompt_batches"], self.batch_size)
        self.kl.load_state_dict(state["kl_controller"])
        self.running.load_state_dict(state["running_baseline"])
        self.reward_moments.load_state_dict(state["reward_moments"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes: LoRA adapters, or every weight in full fine-tuning (tied ones once)."""
    return {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save(
    folder: Path, state: RLState, models: dict[str, torch.nn.Module], optimizer, sharded: bool = False
) -> None:
    """Write into `<folder>.tmp`, seal it with the index, then rename: a crash leaves no usable half. Every
    process calls it: sharded models are written by every process (its shards, torch.distributed.checkpoint),
    everything else by the main process."""
    tmp = folder.with_name(folder.name + ".tmp")
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    distributed.barrier()
    if sharded:
        dcp.save(sharded_state(models, optimizer), checkpoint_id=str(tmp / SHARDS))
    elif distributed.is_main():
        for name, model in models.items():
            save_file(trainable_state(model), tmp / f"{name}.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    distributed.barrier()
    if distributed.is_main():
        crash_point("ppo.checkpoint", state.step)
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")  # sampling noise is seeded by step
        (tmp / "state.json").write_text(json.dumps(state.state_dict()))
        write_index(tmp, state.step)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    distributed.barrier()


SHARDS = "shards"  # a sharded run's weights and optimizer state, one file per writing process


def sharded_state(models: dict[str, torch.nn.Module], optimizer) -> dict[str, Any]:
    """The trainable weights and the optimizer state of sharded models, as torch.distributed.checkpoint
    saves and loads them: keyed by parameter name, so a checkpoint resumes on any number of processes."""
    options = StateDictOptions(ignore_frozen_params=True)
    weights, optimizer_state = get_state_dict(torch.nn.ModuleDict(models), optimizer, options=options)
    return {"models": weights, "optimizer": optimizer_state}


def load(
    folder: Path, state: RLState, models: dict[str, torch.nn.Module], optimizer, sharded: bool = False
) -> None:
    """Restore weights, optimizer, RNG and `state` from a verified checkpoint folder (on every process)."""
    if (folder / SHARDS).is_dir() != sharded:
        written, now = ("fsdp2", "replicated") if (folder / SHARDS).is_dir() else ("replicated", "fsdp2")
        raise UserError(
            f"Checkpoint {folder} was written by engine {written}; this run uses {now}. Resume with the "
            "engine that wrote it, or start the stage afresh (rlhf run --from STAGE)."
        )
    if sharded:
        saved = sharded_state(models, optimizer)
        dcp.load(saved, checkpoint_id=str(folder / SHARDS))
        set_state_dict(
            torch.nn.ModuleDict(models),
            optimizer,
            model_state_dict=saved["models"],
            optim_state_dict=saved["optimizer"],
            options=StateDictOptions(ignore_frozen_params=True),
        )
    else:
        load_replicated(folder, models, optimizer)
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    state.load_state_dict(json.loads((folder / "state.json").read_text()))


def load_replicated(folder: Path, models: dict[str, torch.nn.Module], optimizer) -> None:
    for name, model in models.items():
        weights = load_file(folder / f"{name}.safetensors")
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise RuntimeError(f"checkpoint {folder} has weights the model lacks: {sorted(missing)[:3]}")
        model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))


class CheckpointSchedule:
    """When to write a resumable checkpoint: every `every` steps when set; otherwise by time, as often as
    keeps writing them under `overhead` of the stage's time. The first is written after step 1 (which
    measures what a write costs); each next one once the time since the last write ended reaches
    cost / overhead. Never at the last step: the stage's output follows at once."""

    def __init__(
        self, every: int | None, overhead: float | None, clock: Callable[[], float] = time.monotonic
    ):
        self.every, self.overhead, self.clock = every, overhead, clock
        self.cost: float | None = None  # seconds the last write took
        self.last_end = 0.0

    def due(self, step: int, last_step: int) -> bool:
        if step >= last_step:
            return False
        if self.every:
            return step % self.every == 0
        if self.overhead is None:
            return False
        return self.cost is None or self.clock() - self.last_end >= self.cost / self.overhead

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a checkpoint's write: remembers what it cost."""
        start = self.clock()
        yield
        self.last_end = self.clock()
        self.cost = self.last_end - start


def resume_point(work_dir: Path, stage: str) -> Path | None:
    return latest_valid(work_dir / "checkpoints", stage)


def checkpoint_folder(work_dir: Path, step: int) -> Path:
    return work_dir / "checkpoints" / f"step-{step:06d}"


def keep_newest(work_dir: Path, keep: int) -> None:
    prune(work_dir / "checkpoints", keep)
