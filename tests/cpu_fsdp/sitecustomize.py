"""Test-only: let Accelerate shard with FSDP on CPU processes.

Accelerate sets the FSDP distributed type only for GPU-like devices (MULTI_CPU is left out of that branch of
`AcceleratorState.__init__`, so `ACCELERATE_USE_FSDP` is silently ignored on CPU and the Trainer runs plain
DDP). FSDP2 itself (`fully_shard`, DTensor parameters, gloo collectives) works on CPU, so the tests put this
folder first on PYTHONPATH: Python imports `sitecustomize` at start-up in every process, and this one turns a
CPU launch that asks for FSDP into an FSDP one, exactly as a GPU launch with the same environment would be.
Nothing else changes: the plugin is Accelerate's own, built from the same FSDP_* environment variables."""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
    from accelerate import state
    from accelerate.utils import DistributedType

    _original_init = state.AcceleratorState.__init__

    def _init(self, *args, fsdp_plugin=None, **kwargs):
        _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = _init
