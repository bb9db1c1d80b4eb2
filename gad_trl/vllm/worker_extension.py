"""vLLM worker extension loaded by `gad-trl vllm-serve --weight-sync reload` (`--worker-extension-cls`).

It adds two RPCs, reachable through the dev-mode endpoint `POST /collective_rpc {"method": ..., "kwargs": {...}}`:
`gad_reload_weights(weights_path)` (below) and `gad_claim(run_id, holder, ttl, release)`, the claim a training run
holds on the server so that a second run is refused (`gad_trl.vllm.server_claim`).

Why not call vLLM's own `reload_weights` directly: in vLLM 0.31 its layer-wise reload does not re-process a layer
whose parameter is *tied* to another one (observed on the CPU backend; on GPU an unquantized lm_head has no
post-load state, so the same gap should be harmless there - untested). With `tie_word_embeddings=True` (Qwen2.5-0.5B/1.5B/3B, Qwen3 <= 4B,
Llama-3.2-1B/3B, the tiny test model) the checkpoint holds only `embed_tokens.weight`; the reload writes the new
values into the shared tensor, but `lm_head` is reported as "Failed to load weights" and keeps the kernel state built
from the *old* weights (on CPU: the packed oneDNN/SGL GEMM handle `lm_head.cpu_linear`). The server then samples from
a model whose output head never changes. `gad_reload_weights` records which modules share a parameter before the
reload, re-ties them afterwards if needed (the first module in registration order - the input embedding - is the
source, as in the model's own `tie_weights`) and re-runs `process_weights_after_loading` on the other members.

This module must stay importable without importing vLLM at module level: the worker imports it by qualified name.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


def _shared_parameter_groups(model) -> list[list[tuple[object, str]]]:
    """Groups of (module, parameter name) that hold the very same Parameter object, in registration order."""
    groups: dict[int, list[tuple[object, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                groups.setdefault(id(param), []).append((module, name))
    return [members for members in groups.values() if len(members) > 1]


class GADWorkerExtension:
    """Mixed into vLLM's worker class (CPU or GPU) by `--worker-extension-cls gad_trl.vllm.worker_extension.GADWorkerExtension`."""

    def gad_reload_weights(self, weights_path: str) -> dict:
        refreshed = reload_weights_in_place(self, weights_path=weights_path)
        return {"weights_path": weights_path, "refreshed_tied_layers": refreshed}

    def gad_claim(self, run_id: str, holder: str, ttl: float, release: bool = False) -> dict:
        """Claim this server for the run `run_id` (described by `holder`) for `ttl` seconds, renewed by each call;
        refused while another run's claim is younger than its ttl. `release`: drop the run's own claim. The ages are
        measured here, on the server's clock."""
        now = time.monotonic()
        claim = getattr(self, "_gad_claim", None)
        if claim is not None and claim["run_id"] != run_id and now - claim["at"] < claim["ttl"]:
            return {"granted": False, "holder": claim["holder"], "age": now - claim["at"], "ttl": claim["ttl"]}
        if release:
            if claim is not None and claim["run_id"] == run_id:
                self._gad_claim = None
        else:
            self._gad_claim = {"run_id": run_id, "holder": holder, "ttl": float(ttl), "at": now}
        return {"granted": True}


def reload_weights_in_place(worker, **reload_kwargs) -> list[str]:
    """vLLM's layer-wise `reload_weights` on `worker` (`weights_path=` a folder, or `weights_iterator=` (name, tensor)
    pairs in checkpoint format), then the tied layers re-tied and re-processed (module docstring). Unlike
    `model.load_weights`, the reload first restores each layer's checkpoint-format parameters (with their
    `weight_loader`) and re-runs `process_weights_after_loading`, so it works on CPU, where that processing replaced
    each linear weight by a packed kernel handle. Returns the re-processed tied layers' class names."""
    from vllm.config import set_current_vllm_config

    model = worker.model_runner.get_model()
    tied = _shared_parameter_groups(model)
    worker.reload_weights(**reload_kwargs)
    refreshed = []
    for members in tied:
        source_module, source_name = members[0]
        source = source_module._parameters[source_name]
        for module, name in members[1:]:
            if module._parameters[name] is not source:
                module._parameters[name] = source
            # Rebuild the layer's post-load state (CPU: the packed GEMM handle) from the new shared weight. Only
            # for unquantized layers: re-processing a quantized one would quantize it twice.
            quant_method = getattr(module, "quant_method", None)
            if type(quant_method).__name__.startswith("Unquantized") and hasattr(
                quant_method, "process_weights_after_loading"
            ):
                with set_current_vllm_config(worker.vllm_config):
                    quant_method.process_weights_after_loading(module)
                refreshed.append(type(module).__name__)
    if refreshed:
        logger.info("gad_reload_weights: refreshed tied layer(s) %s after reload", refreshed)
    return refreshed

