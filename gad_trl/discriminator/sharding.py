"""The discriminator sharded with torch FSDP2 (`fully_shard`), next to a student sharded by FSDP or DeepSpeed ZeRO-3.

Replicated, a discriminator keeps full weights, gradients and AdamW states on every process (a 7B one in float32:
~112 GB per GPU). Sharded, each process keeps 1/N of them: one `fully_shard` unit per decoder layer plus the root,
float32 master weights and optimizer states, and bf16 (or fp16) compute when the run uses it
(`MixedPrecisionPolicy`). FSDP2 works beside any launcher that set up `torch.distributed` — the student's DeepSpeed
engine or FSDP wrapper is independent of it — and on CPU with gloo (how the tests run it).

Save and resume go through full, unsharded state dicts (`torch.distributed.checkpoint.state_dict`): `discriminator/`
stays a plain folder that `AutoModelForSequenceClassification.from_pretrained` reloads (`GADValueHeadModel` for a
decoder without one), and the optimizer file holds the full AdamW state keyed by parameter name, so a checkpoint does
not depend on the number of processes.
"""

from __future__ import annotations

import torch
from torch import nn

SHARDING_MODES = ("auto", "none", "fsdp2")
SCORES_METHOD = "gad_last_token_scores"  # the sharded discriminator's scoring entry point (runs FSDP's forward hooks)


def launcher_shards_student(accelerator) -> bool:
    """True under the launchers that shard the student's parameters: FSDP (1 or 2) and DeepSpeed ZeRO-3."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3
    return False


def resolve_discriminator_sharding(mode: str, accelerator) -> bool:
    """Whether to shard the discriminator for `GADConfig.discriminator_sharding=mode` under this launch.

    `auto` shards exactly when the launcher shards the student; `fsdp2` always, and then needs `torch.distributed`
    (a launch through `accelerate launch` / `torchrun`, any number of processes: at world size 1 nothing is split, but
    the float32 master weights with bf16 compute still apply).
    """
    if mode not in SHARDING_MODES:
        raise ValueError(f"discriminator_sharding={mode!r} is not supported; choose one of {', '.join(SHARDING_MODES)}.")
    if mode == "none" or (mode == "auto" and not launcher_shards_student(accelerator)):
        return False
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.XLA:
        raise ValueError(
            "discriminator_sharding shards with torch FSDP2, which does not run on XLA/TPU launches; set "
            "discriminator_sharding='none' (replicated discriminator)."
        )
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        if mode == "auto":
            return False  # e.g. an FSDP config with one process and no process group: nothing to shard across
        raise ValueError(
            "discriminator_sharding='fsdp2' needs torch.distributed, and this is a plain single-process run. Launch "
            "with `accelerate launch` / `torchrun` (or `gad-trl train --num_processes N`), or set "
            "discriminator_sharding='none'."
        )
    return True


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: modules whose class is in the model's `_no_split_modules` (the same
    rule as accelerate's TRANSFORMER_BASED_WRAP), e.g. `Qwen2DecoderLayer`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} declares no `_no_split_modules` decoder layers, so FSDP2 cannot shard it layer by "
            "layer; set discriminator_sharding='none'."
        )
    return layers


def shard_discriminator(model: nn.Module, device: torch.device, compute_dtype: torch.dtype | None) -> nn.Module:
    """Shard `model` in place over all processes with FSDP2: float32 master weights, `compute_dtype` forward/backward
    (None: float32), gradients reduce-scattered in float32. Returns the same module, now an `FSDPModule`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    from .model import backbone_and_head_scores

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        _to_float32(layer)
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    _to_float32(model)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # GAD scores through the backbone and the value head, not through `model.forward`: register that path as a forward
    # so FSDP gathers the root's parameters (embeddings, final norm, head) around it.
    setattr(
        model,
        SCORES_METHOD,
        lambda input_ids, attention_mask, response_mask=None, pooling="last": backbone_and_head_scores(
            model, input_ids, attention_mask, response_mask, pooling
        ),
    )
    register_fsdp_forward_method(model, SCORES_METHOD)
    return model


def _to_float32(module: nn.Module) -> None:
    """Master weights (and so AdamW states) in float32 whatever dtype the checkpoint was loaded in: AdamW on bf16
    weights loses small updates. Cast unit by unit, just before it is sharded, so a bf16-loaded model never exists
    whole in float32 (a 7B one: 14 GB of host memory per process instead of 28 GB)."""
    from torch.distributed.tensor import DTensor

    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32 and not isinstance(tensor, DTensor):
            tensor.data = tensor.data.to(torch.float32)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` for sharded (DTensor) gradients: the total norm is reduced over all shards first."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state_dict(model: nn.Module) -> dict:
    """The unsharded weights, on CPU, on rank 0 (empty elsewhere). Collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: str, should_save: bool) -> None:
    """Write the full AdamW state (keyed by parameter name) to `path`. Collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if should_save:
        torch.save(state, path)


def load_weights(model: nn.Module, state_dict: dict) -> None:
    """Load full weights (present on every process) into the sharded model; each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state_dict, options=_full_options())


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, path: str) -> None:
    """Load a full optimizer state written by `save_optimizer`; each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    from ..run_folder import load_checkpoint_file

    state = load_checkpoint_file(path, map_location="cpu")
    if not optimizer_state_is_by_name(state):
        raise ValueError(
            f"{path} holds a replicated discriminator's optimizer state (keyed by position, not parameter name): this "
            "checkpoint was written with discriminator_sharding='none'. Resume it with discriminator_sharding='none', "
            "or start a new run."
        )
    set_optimizer_state_dict(model, optimizer, state, options=_full_options())


def optimizer_state_is_by_name(state: dict) -> bool:
    """Whether an optimizer state dict is keyed by parameter name (`save_optimizer`), not by position."""
    params = [name for group in state.get("param_groups", []) for name in group.get("params", [])]
    return bool(params) and isinstance(params[0], str)
