"""vLLM server mode for GAD: `gad-trl vllm-serve` and the trainer-side backends (NCCL, reload or LoRA weight sync).

Importing this package does not import vLLM; the backends need `trl.generation` (and vLLM installed to run).
"""

from .launcher import VLLMServer
from .serve import build_command, serve_main, suggested_command

__all__ = [
    "LoRAVLLMGeneration",
    "NCCLVLLMGeneration",
    "ReloadVLLMGeneration",
    "ServedModelError",
    "ServerInUseError",
    "VLLMServer",
    "VLLMServerError",
    "build_command",
    "patched_vllm_generation",
    "serve_main",
    "suggested_command",
    "vllm_generation_class",
]


def __getattr__(name):
    if name in ("LoRAVLLMGeneration", "NCCLVLLMGeneration", "ReloadVLLMGeneration", "ServedModelError",
                "ServerInUseError", "VLLMServerError", "patched_vllm_generation", "vllm_generation_class"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module 'gad_trl.vllm' has no attribute {name!r}")
