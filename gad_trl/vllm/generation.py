"""vLLM server-mode generation backends for GAD: TRL's NCCL weight sync, or a reload-from-disk sync that runs on CPU.

`patched_vllm_generation(args)` swaps the class that `GRPOTrainer.__init__` instantiates
(`trl.trainer.grpo_trainer.VLLMGeneration`) for the duration of a `with` block:

- `vllm_weight_sync="nccl"`: `NCCLVLLMGeneration`, TRL's own class (NCCL communicator, weights broadcast to the
  server) with clearer errors when the server is unreachable or dies.
- `vllm_weight_sync="reload"`: `ReloadVLLMGeneration`. No NCCL communicator (NCCL is CUDA-only). Each weight sync
  saves the student (unwrapped; PEFT adapters merged; FSDP/ZeRO-3 parameters gathered, through TRL's own parameter
  iterator) as `model.safetensors` in `vllm_weight_sync_dir`, then asks the server to load it with the dev-mode
  `POST /collective_rpc` (`gad_reload_weights`, from `gad_trl.vllm.worker_extension`, or vLLM's `reload_weights`),
  then resets the server's prefix cache. The directory must be readable by the server (same machine or a shared
  file system).
- `vllm_weight_sync="lora"`: `LoRAVLLMGeneration`, for a LoRA student on a server started with
  `gad-trl vllm-serve --weight-sync lora` (the student's base, LoRA enabled). Each weight sync saves only the
  student's adapter into `vllm_weight_sync_dir` and loads it as a new adapter (`gad_trl.vllm.lora_sync`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager

import requests
import torch
from requests.adapters import HTTPAdapter
from trl.generation.vllm_client import VLLMClient
from trl.generation.vllm_generation import VLLMGeneration

from ..redact import redact_string, redacted_exception
from .serve import WORKER_EXTENSION, suggested_command

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


class VLLMServerError(ConnectionError):
    """The vLLM server used for generation can't be reached, died, or rejected a request. Its message never shows a
    password or token of `vllm_server_base_url` (`gad_trl.redact`); raise it `from redacted_exception(exc)`, so the
    error it wraps (TRL's names the URL too) shows none either."""

    def __init__(self, message: str):
        super().__init__(redact_string(message))


class ServedModelError(VLLMServerError):
    """The vLLM server serves another model than the student (found when connecting, before any weight sync)."""


class ServerInUseError(VLLMServerError):
    """The vLLM server is claimed by another training run (`gad_trl.vllm.server_claim`)."""


def _model_name_or_path(model) -> str:
    for obj in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        name = getattr(obj, "name_or_path", None)
        if name:
            return str(name)
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", None) or "<student checkpoint>")


def _ties_word_embeddings(model) -> bool:
    config = getattr(model, "config", None)
    if config is None:
        return False
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text_config, "tie_word_embeddings", False) or getattr(config, "tie_word_embeddings", False))


class _TimeoutHTTPAdapter(HTTPAdapter):
    """An HTTPAdapter that gives every request a timeout when the caller set none (TRL's client sets none, so a
    server that is alive but hung would block training forever)."""

    def __init__(self, *args, timeout: float | None = None, **kwargs):
        self.timeout = timeout
        super().__init__(*args, **kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


class _GADVLLMClient(VLLMClient):
    """TRL's client with GAD's transport policy on its session from its first request on: a timeout on every request
    (`_TimeoutHTTPAdapter`) and few, quick retries, so a dead or hung server is reported within seconds (plus the
    timeout) instead of after TRL's minute of back-off, or never."""

    # Failed connections are retried a few times with a short back-off; read errors and 5xx answers a few times too.
    CONNECT_RETRIES = 2
    BACKOFF = 0.5

    def __init__(self, *args, request_timeout: float | None = None, **kwargs):
        self._request_timeout = request_timeout  # before super().__init__, whose `GET /v1/models` goes through _get
        super().__init__(*args, **kwargs)
        self._mount_gad_adapter()

    def _get(self, url: str, **kwargs) -> dict:
        self._mount_gad_adapter()
        return super()._get(url, **kwargs)

    def _mount_gad_adapter(self) -> None:
        if getattr(self, "_gad_adapter", None) is not None:
            return
        from urllib3.util.retry import Retry

        retry = Retry(
            total=5,
            connect=self.CONNECT_RETRIES,
            read=2,
            status=3,
            status_forcelist=[500, 502, 503],
            backoff_factor=self.BACKOFF,
            allowed_methods=["POST", "GET"],
        )
        self._gad_adapter = _TimeoutHTTPAdapter(timeout=self._request_timeout, max_retries=retry, pool_maxsize=64)
        self.session.mount("http://", self._gad_adapter)
        self.session.mount("https://", self._gad_adapter)


class _ServerErrorsMixin:
    """Turns transport errors on the way to the server into `VLLMServerError`s that name the server and the fix."""

    weight_sync = "nccl"
    request_timeout: float | None = None  # seconds a request may wait for the server's answer; None = no limit

    def _base_url(self) -> str:
        if self.server_base_url is not None:
            return self.server_base_url.rstrip("/")
        return f"http://{self.server_host}:{self.server_port}"

    def _start_command(self) -> str:
        from urllib.parse import urlparse

        parsed = urlparse(self._base_url())
        host = parsed.hostname or self.server_host
        if host in ("0.0.0.0", "localhost"):
            host = "127.0.0.1"
        accelerator = getattr(self, "accelerator", None)
        on_cpu = accelerator is not None and accelerator.device.type == "cpu"
        cpu_float32 = on_cpu and getattr(self.model, "dtype", None) == torch.float32
        return suggested_command(
            _model_name_or_path(self.model), host, parsed.port or self.server_port, self.weight_sync, cpu_float32,
            lora_rank=self._lora_rank(),
        )

    def _lora_rank(self) -> int | None:
        return None  # LoRAVLLMGeneration: the student adapter's rank, for --max-lora-rank

    def _connect_client(self) -> VLLMClient:
        url = self._base_url()
        try:
            client = _GADVLLMClient(
                base_url=url, group_port=self.group_port, connection_timeout=self.server_timeout,
                request_timeout=self.request_timeout,
            )  # fmt: skip
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise VLLMServerError(
                f"No vLLM server answered at {url} within vllm_server_timeout={self.server_timeout} s "
                f"(vllm_mode='server', vllm_weight_sync={self.weight_sync!r}, vllm_request_timeout="
                f"{self.request_timeout} s per request). Start one first, e.g.:\n\n"
                f"    {self._start_command()}\n\n"
                "or point the trainer at a running server with vllm_server_base_url / vllm_server_host + "
                "vllm_server_port."
            ) from redacted_exception(exc)
        self._check_served_model(client)
        return client

    def _check_served_model(self, client: VLLMClient) -> None:
        """Refuse a server that serves another model than the student, before any weight sync
        (`gad_trl.vllm.served_model`)."""
        from .served_model import check_served_model

        timeout = min(self.request_timeout or 30.0, 30.0)
        try:
            problem = check_served_model(
                client.session, self._base_url(), self.model, _model_name_or_path(self.model),
                tokenizer=getattr(self, "processing_class", None), start_command=self._start_command(),
                timeout=timeout, base_is_kept=self.weight_sync == "lora",
            )  # fmt: skip
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise self._server_died("listing its model (/v1/models)", exc) from redacted_exception(exc)
        if problem is not None:
            raise ServedModelError(problem)

    # One run per server (gad_trl.vllm.server_claim): claimed by GADTrainer.train on the main process.
    _claim = None
    claim_requests = 0  # `POST /collective_rpc` of the claims released so far (the others are weight reloads)

    def claim_server(self, holder: str) -> str | None:
        """Claim the server for this run; the reason to refuse the run (another run holds it), or None. A server
        without gad_trl's worker extension cannot hold a claim: a warning says so."""
        client = getattr(self, "vllm_client", None)
        if self.mode != "server" or client is None:
            return None
        from .server_claim import ServerClaim

        try:
            extension = (client.get_server_info().get("parallel_config") or {}).get("worker_extension_cls") or ""
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise self._server_died("reading its configuration", exc) from redacted_exception(exc)
        except RuntimeError:  # TRL: no dev-mode endpoints
            extension = ""
        if extension != WORKER_EXTENSION:
            logger.warning(
                "The vLLM server at %s runs without gad_trl's worker extension, so this run cannot claim it: another "
                "run sharing it would go unnoticed (both would train on each other's samples). Start it with "
                "`gad-trl vllm-serve --weight-sync reload`, or add `--worker-extension-cls %s`, to have a second run "
                "refused.", redact_string(self._base_url()), WORKER_EXTENSION,
            )
            return None
        self._claim = ServerClaim(client.session, self._base_url(), holder,
                                  timeout=min(self.request_timeout or 30.0, 30.0))
        try:
            problem = self._claim.acquire(redact_string(self._base_url()))
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            self._claim = None
            raise self._server_died("claiming it for this run", exc) from redacted_exception(exc)
        if problem is not None:
            self._claim = None
        return problem

    def release_server(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self.claim_requests += self._claim.requests
            self._claim = None

    def _check_claim(self) -> None:
        if self._claim is not None and self._claim.lost is not None:
            raise ServerInUseError(self._claim.lost)

    def _server_died(self, action: str, exc: BaseException) -> VLLMServerError:
        return VLLMServerError(
            f"The vLLM server at {self._base_url()} stopped answering while {action} ({type(exc).__name__}: {exc}). "
            "The training step was aborted before any optimizer update or checkpoint write, so checkpoints already "
            "in output_dir are intact. Restart the server, e.g.:\n\n"
            f"    {self._start_command()}\n\n"
            "then resume with trainer.train(resume_from_checkpoint=True) (or `--resume_from_checkpoint` on the CLI)."
        )

    def generate(self, *args, **kwargs):
        self._check_claim()
        try:
            return super().generate(*args, **kwargs)
        except VLLMServerError:
            raise
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            if self.mode != "server":
                raise
            raise self._server_died("generating completions", exc) from redacted_exception(exc)


class NCCLVLLMGeneration(_ServerErrorsMixin, VLLMGeneration):
    """TRL's `VLLMGeneration` (NCCL weight sync) with clear errors when the server is unreachable or dies."""

    weight_sync = "nccl"

    def _init_vllm(self):
        if self.mode != "server":
            return super()._init_vllm()
        if self.accelerator.is_main_process:
            self.vllm_client = self._connect_client()
            self.vllm_client.init_communicator(device=self.accelerator.device)
        self.accelerator.wait_for_everyone()

    def sync_weights(self):
        self._check_claim()
        try:
            return super().sync_weights()
        except VLLMServerError:
            raise
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            if self.mode != "server":
                raise
            raise self._server_died("synchronising weights", exc) from redacted_exception(exc)


class ReloadVLLMGeneration(_ServerErrorsMixin, VLLMGeneration):
    """Server-mode generation whose weight sync goes through the file system and the server's reload RPC.

    Works wherever the server can read `weight_sync_dir` (in particular on CPU, where NCCL is unavailable). Set the
    directory with the class attribute or the `weight_sync_dir` keyword; `patched_vllm_generation` does it from
    `GADConfig.vllm_weight_sync_dir` (default `<output_dir>/_vllm_weights`).
    """

    weight_sync = "reload"
    weight_sync_dir: str | None = None

    def __init__(self, *args, weight_sync_dir: str | None = None, **kwargs):
        if weight_sync_dir is not None:
            self.weight_sync_dir = weight_sync_dir
        self._reload_method = None
        self.num_weight_syncs = 0
        self.last_sync_bytes = 0  # what the last sync wrote for the server to read (logged as vllm/weight_sync_bytes)
        super().__init__(*args, **kwargs)

    def _init_vllm(self):
        if self.mode != "server":
            return super()._init_vllm()
        if not self.weight_sync_dir:
            raise ValueError("vllm_weight_sync='reload' needs a weight_sync_dir (GADConfig.vllm_weight_sync_dir).")
        self.weight_sync_dir = os.path.abspath(self.weight_sync_dir)
        if self.accelerator.is_main_process:
            os.makedirs(self.weight_sync_dir, exist_ok=True)
            # No init_communicator: the weights travel through `weight_sync_dir`, not NCCL.
            self.vllm_client = self._connect_client()
            self._reload_method = self._pick_reload_method()
        self.accelerator.wait_for_everyone()

    def _pick_reload_method(self) -> str:
        try:
            info = self.vllm_client.get_server_info()
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise self._server_died("reading its configuration", exc) from redacted_exception(exc)
        except RuntimeError as exc:  # TRL: the dev-mode endpoints are missing
            raise VLLMServerError(
                f"The vLLM server at {self._base_url()} runs without VLLM_SERVER_DEV_MODE=1, so it has no "
                f"/collective_rpc endpoint to reload weights. Restart it with:\n\n    {self._start_command()}\n"
            ) from redacted_exception(exc)
        extension = (info.get("parallel_config") or {}).get("worker_extension_cls") or ""
        if extension == WORKER_EXTENSION:
            return "gad_reload_weights"
        device = str((info.get("device_config") or {}).get("device_type") or "unknown")
        if _ties_word_embeddings(self.model) and device in ("cpu", "unknown"):
            raise VLLMServerError(
                f"The vLLM server at {self._base_url()} was started without `--worker-extension-cls "
                f"{WORKER_EXTENSION}`. The student ties its input and output embeddings, and on vLLM's CPU backend "
                "the plain `reload_weights` RPC leaves the tied lm_head computing with the old weights, so the server "
                f"would keep sampling from a stale model. Restart it with:\n\n    {self._start_command()}\n"
            )
        logger.warning(
            "The vLLM server at %s has no GAD worker extension; falling back to vLLM's reload_weights RPC. "
            "Prefer `%s`.",
            self._base_url(),
            self._start_command(),
        )
        return "reload_weights"

    def _save_weights(self) -> str:
        """Write the current student weights (gathered, adapters merged) to `<weight_sync_dir>/model.safetensors`."""
        from safetensors.torch import save_file

        is_main = self.accelerator.is_main_process
        state = {}
        # Every process iterates: gathering sharded parameters is a collective operation.
        for name, param in self._iter_named_params():
            if is_main and name not in state:
                state[name] = param.detach().to("cpu", copy=True).contiguous()
        path = os.path.join(self.weight_sync_dir, WEIGHTS_FILE)
        if is_main:
            from ..run_folder import explain_disk_full

            os.makedirs(self.weight_sync_dir, exist_ok=True)  # removed when an earlier train() call ended

            partial = path + ".partial"  # not matched by the server's *.safetensors glob
            hint = ("Free space there or set vllm_weight_sync_dir to a folder on a larger disk that the vLLM server "
                    "can read (each sync rewrites one file of the student's size).")
            try:
                with explain_disk_full(partial, hint=hint):
                    save_file(state, partial, metadata={"format": "pt"})
            except BaseException:
                if os.path.exists(partial):
                    os.remove(partial)  # give the space back
                raise
            os.replace(partial, path)  # the server never sees a half-written file
            self.last_sync_bytes = os.path.getsize(path)
        return path

    def _reset_prefix_cache(self) -> None:
        try:
            self.vllm_client.reset_prefix_cache()
        except (requests.exceptions.RequestException, ConnectionError) as exc:
            raise self._server_died("resetting its prefix cache", exc) from redacted_exception(exc)

    def sync_weights(self):
        if self.mode == "colocate":
            return self._reload_colocated()
        if self.mode != "server":
            return super().sync_weights()
        self._check_claim()
        start = time.perf_counter()
        self._save_weights()
        if self.accelerator.is_main_process:
            url = f"{self._base_url()}/collective_rpc"
            payload = {"method": self._reload_method, "kwargs": {"weights_path": self.weight_sync_dir}}
            try:
                response = self.vllm_client.session.post(url, json=payload)
            except requests.exceptions.RequestException as exc:
                raise self._server_died("reloading the student weights", exc) from redacted_exception(exc)
            if response.status_code != 200:
                raise VLLMServerError(
                    f"The vLLM server at {self._base_url()} failed to reload the weights from {self.weight_sync_dir} "
                    f"({response.status_code}: {response.text[:2000]}). The directory must be readable by the "
                    "server (same machine or a shared file system)."
                )
            self._reset_prefix_cache()
            self.num_weight_syncs += 1
            logger.debug("reload weight sync #%d took %.2f s", self.num_weight_syncs, time.perf_counter() - start)
        self.accelerator.wait_for_everyone()

    def remove_synced_weights(self) -> None:
        """Delete the merged copy written for the server once training ends: the server holds the weights in memory
        by then and the run's model is saved in output_dir, so the file is scratch (15 GB for a 7B student). The
        folder goes too when nothing else is in it (a user-named folder may hold other files)."""
        if self.mode != "server" or not self.weight_sync_dir or not self.accelerator.is_main_process:
            return
        path = os.path.join(self.weight_sync_dir, WEIGHTS_FILE)
        for leftover in (path, path + ".partial"):
            if os.path.isfile(leftover):
                os.remove(leftover)
        try:
            os.rmdir(self.weight_sync_dir)
        except OSError:  # not empty, or already gone
            pass

    def _reload_colocated(self):
        """Colocated vLLM: the student's weights go straight into the in-process engine through vLLM's layer-wise
        reload (`worker_extension.reload_weights_in_place`), in memory, not file by file. TRL's colocate sync calls
        `model.load_weights`, which needs each parameter's `weight_loader`; on vLLM's CPU backend the linear layers'
        weights were replaced after loading by bare parameters (docs/vllm.md, "Colocated vLLM on CPU")."""
        from .worker_extension import reload_weights_in_place

        if self.enable_sleep_mode:  # as TRL: map the weights' memory before writing to it
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        worker = self.llm.llm_engine.model_executor.driver_worker
        reload_weights_in_place(worker, weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()
        self.num_weight_syncs += 1


class LoRAVLLMGeneration(ReloadVLLMGeneration):
    """Server-mode generation for a LoRA student whose weight sync sends only its adapter (`gad_trl.vllm.lora_sync`):
    saved into `weight_sync_dir/gad-student-<n>/`, loaded by the server (`POST /v1/load_lora_adapter`), then named
    as the model of every generation request; the adapter before it is unloaded and its folder removed. The base the
    server serves never changes, so a 4-bit base works, and the discriminator's adapter (shared-base mode: a second
    adapter on the same PEFT model) is never sent."""

    weight_sync = "lora"

    def _init_vllm(self):
        from .lora_sync import student_adapter

        self.adapter_name, self.lora_config = student_adapter(self._student())
        self._served: list[str] = []  # adapter names loaded on the server by this run, oldest first
        if self.mode == "colocate":
            return self._init_colocated()
        super()._init_vllm()

    def _init_colocated(self):
        """Colocate mode: TRL builds the in-process engine, here with LoRA enabled (its `LLM(...)` call gets
        `enable_lora`, the adapter's rank, one adapter at a time), and every generate call of TRL's gets the current
        adapter's `LoRARequest` (`_AdapterLLM`). The base is loaded once and never synced."""
        import functools

        import trl.generation.vllm_generation as trl_generation

        from .serve import lora_rank_for

        if not hasattr(trl_generation, "LLM"):  # vLLM is not installed: TRL's own error names the install
            return VLLMGeneration._init_vllm(self)
        if not self.weight_sync_dir:
            raise ValueError("vllm_weight_sync='lora' needs a weight_sync_dir (GADConfig.vllm_weight_sync_dir).")
        # One folder per process: each process of a colocated run has its own engine.
        self.weight_sync_dir = os.path.join(os.path.abspath(self.weight_sync_dir),
                                            f"process{self.accelerator.process_index}")
        os.makedirs(self.weight_sync_dir, exist_ok=True)
        original = trl_generation.LLM
        trl_generation.LLM = functools.partial(original, enable_lora=True, max_loras=1,
                                               max_lora_rank=lora_rank_for(self._lora_rank()))
        try:
            VLLMGeneration._init_vllm(self)
        finally:
            trl_generation.LLM = original
        self.llm = _AdapterLLM(self.llm)

    def _student(self):
        return self.accelerator.unwrap_model(self.model)

    def _lora_rank(self) -> int | None:
        config = getattr(self, "lora_config", None)
        if config is None:
            return None
        return int(config.r)  # rank_pattern is refused (lora_sync.student_adapter)

    def _pick_reload_method(self) -> str:
        """Instead of a reload RPC: check that the server serves LoRA adapters of the student's rank."""
        from .lora_sync import server_lora_problem

        url = self._base_url()
        try:
            response = self.vllm_client.session.get(f"{url}/server_info", params={"config_format": "json"},
                                                    timeout=min(self.request_timeout or 30.0, 30.0))
        except requests.exceptions.RequestException as exc:
            raise self._server_died("reading its configuration", exc) from redacted_exception(exc)
        if response.status_code == 404:
            raise VLLMServerError(
                f"The vLLM server at {url} runs without VLLM_SERVER_DEV_MODE=1, so GAD cannot check that it serves "
                f"LoRA adapters. Restart it with:\n\n    {self._start_command()}\n"
            )
        try:
            info = response.json()
        except ValueError as exc:  # an error page, not the configuration
            raise self._server_died(f"reading its configuration ({response.status_code}: {response.text[:500]})",
                                    exc) from redacted_exception(exc)
        problem = server_lora_problem(info, self._lora_rank())
        if problem is not None:
            raise VLLMServerError(
                f"The vLLM server at {url} {problem}, so it cannot serve the student's LoRA adapter "
                f"(vllm_weight_sync='lora'). Restart it with:\n\n    {self._start_command()}\n"
            )
        return "load_lora_adapter"

    def _adapter_request(self, endpoint: str, payload: dict, action: str) -> requests.Response:
        """One POST, not retried: vLLM answers any adapter it cannot load with HTTP 500, and the client session's
        retries would turn that answer (the reason) into a "server stopped answering" error."""
        self.vllm_client.session  # noqa: B018 - async generation: wait for the request in flight first
        try:
            return requests.post(f"{self._base_url()}/v1/{endpoint}", json=payload, timeout=self.request_timeout)
        except requests.exceptions.RequestException as exc:
            raise self._server_died(action, exc) from redacted_exception(exc)

    def _unload_leftovers(self) -> None:
        """Adapters an earlier run of this package left loaded (it was killed): unloaded once, at the first sync,
        after this run claimed the server."""
        from .lora_sync import ADAPTER_PREFIX

        try:
            models = self.vllm_client.session.get(f"{self._base_url()}/v1/models", timeout=30).json().get("data", [])
        except (requests.exceptions.RequestException, ValueError) as exc:
            raise self._server_died("listing its adapters (/v1/models)", exc) from redacted_exception(exc)
        for entry in models:
            name = str(entry.get("id", ""))
            if name.startswith(ADAPTER_PREFIX) and name not in self._served:
                logger.info("unloading adapter %s, left on the vLLM server by an earlier run", name)
                self._adapter_request("unload_lora_adapter", {"lora_name": name}, "unloading an old adapter")

    def _save_weights(self, every_process: bool = False) -> str:
        """Write the student's adapter (gathered on every process) to `<weight_sync_dir>/gad-student-<n>/` (n = the
        next sync), on the main process or, for colocated engines, on every process."""
        from .lora_sync import ADAPTER_PREFIX, adapter_state, save_adapter

        state = adapter_state(self._student(), self.adapter_name, self._dist)  # collective: every process
        folder = os.path.join(self.weight_sync_dir, f"{ADAPTER_PREFIX}{self.num_weight_syncs + 1}")
        if every_process or self.accelerator.is_main_process:
            self.last_sync_bytes = save_adapter(state, self.lora_config, folder)
        return folder

    def _remove_old_adapters(self, keep: set) -> None:
        """Folders of the adapter versions not in `keep`: unloaded from the server, never read again."""
        from .lora_sync import ADAPTER_PREFIX

        for old in os.listdir(self.weight_sync_dir):
            if old.startswith(ADAPTER_PREFIX) and old not in keep:
                shutil.rmtree(os.path.join(self.weight_sync_dir, old), ignore_errors=True)

    def _sync_colocated(self):
        """Each process saves the adapter for its own engine; the next generate calls use it (vLLM loads an adapter
        when a request first names it, so the folder before it is removed one sync later)."""
        from vllm.lora.request import LoRARequest

        folder = self._save_weights(every_process=True)
        name, version = os.path.basename(folder), self.num_weight_syncs + 1
        self.llm.lora_request = LoRARequest(name, version, folder)
        self._served = [*self._served[-1:], name]
        self._remove_old_adapters(set(self._served))
        self.num_weight_syncs = version

    def sync_weights(self):
        if self.mode == "colocate":
            return self._sync_colocated()
        if self.mode != "server":
            return super().sync_weights()
        self._check_claim()
        start = time.perf_counter()
        folder = self._save_weights()
        if self.accelerator.is_main_process:
            name = os.path.basename(folder)
            if self.num_weight_syncs == 0:
                self._unload_leftovers()
            response = self._adapter_request("load_lora_adapter", {"lora_name": name, "lora_path": folder},
                                             "loading the student's adapter")
            if response.status_code != 200:
                raise VLLMServerError(
                    f"The vLLM server at {self._base_url()} could not load the student's LoRA adapter from {folder} "
                    f"({response.status_code}: {response.text[:2000]}). The folder must be readable by the server "
                    "(same machine or a shared file system), and the server must serve the student's base model "
                    f"({_model_name_or_path(self.model)}) with LoRA of rank >= {self._lora_rank()}:\n\n"
                    f"    {self._start_command()}\n"
                )
            self.vllm_client.model = name  # TRL's client names it in every request from now on
            # vLLM keys cached prompt blocks by adapter name and path, which a resumed run reuses (gad-student-1,
            # ...): drop blocks computed with an earlier run's weights under the same name.
            self._reset_prefix_cache()
            for old in self._served:
                response = self._adapter_request("unload_lora_adapter", {"lora_name": old},
                                                 "unloading the previous adapter")
                if response.status_code != 200:
                    logger.warning("The vLLM server did not unload adapter %s (%s: %s).", old,
                                   response.status_code, response.text[:500])
            previous = self._served[-1] if self._served else None
            self._served = [name]
            # The folder before stays one more sync: a request dropped without waiting (train() stopped mid-step)
            # may still be generating with that adapter.
            self._remove_old_adapters({name, previous})
            self.num_weight_syncs += 1
            logger.debug("LoRA adapter sync #%d (%d bytes) took %.2f s", self.num_weight_syncs, self.last_sync_bytes,
                         time.perf_counter() - start)
        self.accelerator.wait_for_everyone()


class _AdapterLLM:
    """A colocated `vllm.LLM` whose `generate` (the call TRL's colocated generation makes) carries the student
    adapter's `LoRARequest` (`lora_request`, set by each sync; None, the base, before the first); everything else is
    the engine's own."""

    def __init__(self, llm):
        self.__dict__["_llm"] = llm
        self.__dict__["lora_request"] = None

    def generate(self, *args, **kwargs):
        kwargs.setdefault("lora_request", self.lora_request)
        return self._llm.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def __setattr__(self, name, value):
        if name == "lora_request":
            self.__dict__[name] = value
        else:
            setattr(self._llm, name, value)


def check_colocate_weight_sync(args) -> None:
    """Refuse, before vLLM starts, the one colocated set-up whose first weight sync would fail: TRL's own sync
    (`vllm_weight_sync="nccl"`, the default) on vLLM's CPU backend (docs/vllm.md, "Colocated vLLM on CPU")."""
    if not (getattr(args, "use_vllm", False) and getattr(args, "vllm_mode", None) == "colocate"):
        return
    if getattr(args, "vllm_weight_sync", "nccl") not in ("reload", "lora") and args.device.type == "cpu":
        raise ValueError(
            "vllm_mode='colocate' on CPU needs vllm_weight_sync=\"reload\" (CLI: --vllm_weight_sync reload): TRL's "
            "colocated weight sync calls vLLM's model.load_weights, which fails on vLLM's CPU backend with "
            "\"'Parameter' object has no attribute 'weight_loader'\" (after loading, the CPU backend replaces each "
            "linear layer's weight by a bare Parameter and packs the values into its GEMM kernel). With 'reload' the "
            "weights go through vLLM's layer-wise reload instead (a LoRA student can use vllm_weight_sync=\"lora\": "
            "only its adapter changes). See docs/vllm.md, \"Colocated vLLM on CPU\"."
        )


def vllm_generation_class(args):
    """The `VLLMGeneration` class a trainer with `args` should use, or `None` to keep TRL's."""
    mode = getattr(args, "vllm_mode", None) if getattr(args, "use_vllm", False) else None
    weight_sync = getattr(args, "vllm_weight_sync", "nccl")
    weight_sync_dir = getattr(args, "vllm_weight_sync_dir", None) or os.path.join(args.output_dir, "_vllm_weights")
    if mode == "colocate" and weight_sync == "reload":  # in memory: no directory, no server
        return type("ReloadVLLMGeneration", (ReloadVLLMGeneration,), {})
    if mode == "colocate" and weight_sync == "lora":  # the adapter's files, for the in-process engine
        return type("LoRAVLLMGeneration", (LoRAVLLMGeneration,), {"weight_sync_dir": weight_sync_dir})
    if mode != "server":
        return None
    settings = {"request_timeout": getattr(args, "vllm_request_timeout", None)}
    if weight_sync == "nccl":
        return type("NCCLVLLMGeneration", (NCCLVLLMGeneration,), settings)
    if weight_sync in ("reload", "lora"):
        cls = ReloadVLLMGeneration if weight_sync == "reload" else LoRAVLLMGeneration
        return type(cls.__name__, (cls,), {**settings, "weight_sync_dir": weight_sync_dir})
    raise ValueError(f"vllm_weight_sync must be 'nccl', 'reload' or 'lora', got {weight_sync!r}.")


@contextmanager
def patched_vllm_generation(args):
    """While active, `GRPOTrainer.__init__` builds the vLLM backend that `args` asks for (no-op unless server mode, or
    colocate mode with `vllm_weight_sync="reload"` or `"lora"`)."""
    cls = vllm_generation_class(args)
    if cls is None:
        yield
        return
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.VLLMGeneration
    grpo_module.VLLMGeneration = cls
    try:
        yield
    finally:
        grpo_module.VLLMGeneration = original
