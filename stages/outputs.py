"""A stage's outputs that every stage kind writes the same way: its model folder and its log folder.

Kept apart from stages/hf_trainer.py so that the RL stage does not import the Trainer's machinery (and
peft with it: ~100 MB and ~2 s) when it does not use them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.errors import UserError
from pipeline.models import is_peft, save_pretrained, without_peft_wrapper
from stages.base import StageContext


def logs_dir(ctx: StageContext) -> Path:
    return (ctx.run_dir or ctx.out_dir.parent) / "logs" / ctx.name


def save_with_adapter(model, tokenizer, out_dir: Path) -> None:
    """Save loadable weights. A peft model keeps its adapter in out_dir/adapter and merged weights at the top,
    so the next stage (and its KL reference) starts from the fine-tuned policy, not the bare base.

    The model passed in is never changed: saving happens mid-training (RL snapshots), so the merge runs on a
    copy. Merging in place would remove the live adapter's layers from under the optimizer, and merging then
    unmerging would not restore the base weights bit for bit."""
    if not distributed.is_main():  # one writer; every process holds the same weights
        return
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(
            f"Refusing to save non-finite weights ({len(bad)} tensors, e.g. {bad[0]}) to {out_dir}."
        )
    if is_peft(model):
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        model = copy.deepcopy(model).merge_and_unload()  # one extra copy of the weights while saving
    save_pretrained(model, tokenizer, out_dir)


def save_sharded(
    model: torch.nn.Module, tokenizer, out_dir: Path, rebuild: Callable[[], torch.nn.Module]
) -> None:
    """The output folder of a model sharded over the processes (FSDP): every process takes part in gathering
    the whole weights onto the main process's CPU, where they are loaded into an unsharded copy made by
    `rebuild` and saved as `save_with_adapter` saves. Saving from the main process alone would read shards
    it does not hold (a hang, or a broken folder)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    save_gathered(full, tokenizer, out_dir, rebuild)


def save_gathered(
    full: dict[str, torch.Tensor], tokenizer, out_dir: Path, rebuild: Callable[[], torch.nn.Module]
) -> None:
    """Whole weights already gathered onto the main process (empty elsewhere), saved from an unsharded copy
    made by `rebuild`; every process calls it and waits until the folder is written."""
    if distributed.is_main():
        unsharded = rebuild()
        unsharded.load_state_dict(full)
        save_with_adapter(unsharded, tokenizer, out_dir)
    distributed.barrier()


def unsharded_like(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh, unsharded model of the same architecture, dtype and adapters as a sharded one (its weights
    are to be overwritten). FSDP2 turns each sharded module's class into a subclass `FSDP<Name>` of its
    own: the first class in the MRO that is not FSDP's is the original."""
    from torch.distributed.fsdp import FSDPModule

    base = without_peft_wrapper(model)
    original = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))
    unsharded = original(base.config).to(base.dtype)
    if is_peft(model):
        from peft import get_peft_model

        unsharded = get_peft_model(unsharded, model.peft_config[model.active_adapter])
    return unsharded


def parameters_held(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements of the whole model): a sharded (DTensor) parameter counts
    its local shard only."""
    held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    return held, sum(p.numel() for p in model.parameters())
