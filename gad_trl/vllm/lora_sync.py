"""Adapter-only weight sync (`vllm_weight_sync="lora"`): what a LoRA student sends to a vLLM server that serves LoRA.

TRL's weight sync merges a PEFT student's adapters into its base and sends every weight, which costs the whole model
per step and cannot work with a 4-bit base (the merged weights are no longer 4-bit). vLLM serves LoRA adapters on an
unchanged base natively, so each sync here saves only the student's adapter (its `lora_A`/`lora_B` matrices and
`adapter_config.json`, PEFT's own format) into a folder the server can read, and the server loads it as a new adapter
(`POST /v1/load_lora_adapter`) that the next generation requests name as their model
(`gad_trl.vllm.generation.LoRAVLLMGeneration` does the HTTP side).

This module holds the parts that need no server: which adapter is the student's and whether vLLM can serve it, its
gathered weights, the atomic write, and whether a server's configuration can take it.
"""

from __future__ import annotations

import copy
import os
import shutil

import torch

ADAPTER_PREFIX = "gad-student-"  # names of the adapters a run loads: gad-student-1, gad-student-2, ...
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def student_adapter(model):
    """(name, LoraConfig) of the student's adapter: the one active adapter of a PEFT model. A `ValueError` that names
    the fix when the student has none, or one vLLM cannot serve."""
    from peft import LoraConfig, PeftModel

    if not isinstance(model, PeftModel):
        raise ValueError(
            "vllm_weight_sync='lora' sends only the student's LoRA adapter, but the student is not a PEFT model. "
            "Train a LoRA student (use_peft=True, or pass peft_config=LoraConfig(...) to GADTrainer), or use "
            "vllm_weight_sync='reload' / 'nccl' to send full weights."
        )
    active = model.active_adapters if hasattr(model, "active_adapters") else [model.active_adapter]
    if len(active) != 1:
        raise ValueError(f"vllm_weight_sync='lora' needs one active student adapter, found {active}.")
    name = active[0]
    config = model.peft_config[name]
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"vllm_weight_sync='lora': the student's adapter {name!r} is a {type(config).__name__}; vLLM serves LoRA "
            "adapters only. Use a LoraConfig, or vllm_weight_sync='reload' (merged weights)."
        )
    unsupported = []
    if config.modules_to_save:
        unsupported.append(f"modules_to_save={sorted(config.modules_to_save)} (whole trained modules)")
    if getattr(config, "use_dora", False):
        unsupported.append("use_dora=True")
    if getattr(config, "lora_bias", False):
        unsupported.append("lora_bias=True")
    if getattr(config, "bias", "none") != "none":
        unsupported.append(f"bias={config.bias!r} (vLLM: adapter bias is not supported)")
    if getattr(config, "trainable_token_indices", None):
        unsupported.append("trainable_token_indices")
    # vLLM scales every module by one lora_alpha / r (PEFTHelper): per-module ranks or alphas would be served with the
    # wrong scale, silently.
    if getattr(config, "rank_pattern", None):
        unsupported.append(f"rank_pattern={dict(config.rank_pattern)} (vLLM applies one lora_alpha / r to all modules)")
    if getattr(config, "alpha_pattern", None):
        unsupported.append(f"alpha_pattern={dict(config.alpha_pattern)} (vLLM applies one lora_alpha / r to all "
                           "modules)")
    if int(config.r) > 512:
        unsupported.append(f"r={config.r} (vLLM serves ranks up to 512)")
    if unsupported:
        raise ValueError(
            f"vllm_weight_sync='lora': the student's adapter has {', '.join(unsupported)}, which vLLM's LoRA serving "
            "cannot load. Drop them from the LoRA config, or use vllm_weight_sync='reload' (merged full weights)."
        )
    return name, config


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value: FSDP2 shards are DTensors (gathering is collective: every process calls this)."""
    if hasattr(tensor, "full_tensor"):
        return tensor.full_tensor()
    return tensor


def adapter_state(model, name: str, dist) -> dict[str, torch.Tensor]:
    """The adapter `name`'s weights on CPU under PEFT's saved names (no adapter name in them), gathered from ZeRO-3 /
    FSDP2 shards through TRL's `DistributedBackend` `dist`. Every process must call it (gathering is collective)."""
    from peft import get_peft_model_state_dict

    marker = f".{name}."
    params = [p for n, p in model.named_parameters() if marker in n]
    with dist.gather_params(params):
        # save_embedding_layers=False: no Hub lookup of the base config on every sync; vLLM skips base embeddings.
        state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
        return {key: _full(value).detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def save_adapter(state: dict[str, torch.Tensor], config, folder: str) -> int:
    """Write the adapter (PEFT's files) into `folder` atomically: the server never sees a half-written adapter.
    Returns the bytes written."""
    from safetensors.torch import save_file

    from ..run_folder import explain_disk_full

    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    config = copy.deepcopy(config)
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    hint = ("Free space there or set vllm_weight_sync_dir to a folder on a larger disk that the vLLM server can "
            "read (each sync writes one adapter).")
    try:
        with explain_disk_full(partial, hint=hint):
            save_file(state, os.path.join(partial, ADAPTER_WEIGHTS), metadata={"format": "pt"})
            config.save_pretrained(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def server_lora_problem(server_info: dict, rank: int) -> str | None:
    """Why a server (its `/server_info?config_format=json`) cannot take this student's adapter of rank `rank`, or
    None. The caller appends the command that starts a suitable server."""
    config = server_info.get("vllm_config") or {}
    lora = config.get("lora_config")
    if not lora:
        return "was started without LoRA serving (--enable-lora)"
    if str((server_info.get("vllm_env") or {}).get("VLLM_ALLOW_RUNTIME_LORA_UPDATING")).lower() not in ("1", "true"):
        return ("cannot load adapters while running (VLLM_ALLOW_RUNTIME_LORA_UPDATING is not set in its "
                "environment; `gad-trl vllm-serve --weight-sync lora` sets it)")
    max_rank = lora.get("max_lora_rank")
    if max_rank is not None and int(max_rank) < rank:
        return (f"accepts LoRA adapters up to rank {max_rank} (--max-lora-rank), and the student's adapter has "
                f"rank {rank}")
    return None
