"""Multi-process CPU runs (gloo; `accelerate launch` / `torchrun` without GPUs, DeepSpeed with `DS_ACCELERATOR=cpu`).

accelerate gives each CPU process the device `cpu:<local rank>`, and transformers' Trainer resumes a multi-process
run's optimizer with `torch.load(..., map_location=args.device)`; torch has no deserializer for the location string
"cpu:0", so every multi-process CPU resume failed with "don't know how to restore data location ... (tagged with
cpu:0)". An indexed CPU is the CPU: register that once.
"""

from __future__ import annotations

import re

import torch

_INDEXED_CPU = re.compile(r"cpu:\d+")
_registered = False


def _restore_indexed_cpu(storage, location: str):
    return storage.cpu() if _INDEXED_CPU.fullmatch(location) else None


def register_indexed_cpu_location() -> None:
    """Let `torch.load(map_location=torch.device("cpu", k))` work (idempotent; saving is unaffected)."""
    global _registered
    if not _registered:
        torch.serialization.register_package(100, lambda obj: None, _restore_indexed_cpu)
        _registered = True
