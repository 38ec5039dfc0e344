"""A stage's outputs that every stage kind writes the same way: its model folder and its log folder.

Kept apart from stages/hf_trainer.py so that the RL stage does not import the Trainer's machinery (and
peft with it: ~100 MB and ~2 s) when it does not use them."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.errors import UserError
from pipeline.models import is_peft, save_pretrained
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
