"""Start and observe a `gad-trl vllm-serve` server from Python: used by the test fixtures, the cost benchmark's
`--vllm` mode and notebooks (a background server on this machine, killed with its whole process group).

    server = VLLMServer("path/to/student", "server.log", weight_sync="reload").start()
    ...  # GADConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=server.url, vllm_weight_sync="reload")
    server.kill()
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .serve import CPU_FLOAT32_ARGS, _cuda_available, server_env

DEFAULT_START_TIMEOUT = 240.0
# CPU_FLOAT32_ARGS: greedy decoding then matches transformers' on the float32 checkpoint; short contexts and few
# sequences keep the CPU server small.
CPU_SERVER_ARGS = (*CPU_FLOAT32_ARGS, "--max-model-len", "512", "--max-num-seqs", "16")


def default_server_args() -> tuple[str, ...]:
    """The `vllm serve` options a started server gets unless told otherwise: CPU_SERVER_ARGS on a machine without
    CUDA, none on a GPU (vLLM's own defaults)."""
    return () if _cuda_available() else CPU_SERVER_ARGS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A `gad-trl vllm-serve` subprocess (its own process group) and a few helpers to observe it."""

    def __init__(self, model: str, log_path: str | os.PathLike, weight_sync: str = "reload", extra_args=None):
        """`extra_args`: `vllm serve` options; default `default_server_args()`."""
        if extra_args is None:
            extra_args = default_server_args()
        self.model = str(model)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.log_path = Path(log_path)
        self.command = [
            sys.executable, "-m", "gad_trl.vllm", "--model", self.model, "--host", self.host,
            "--port", str(self.port), "--weight-sync", weight_sync, *extra_args,
        ]  # fmt: skip
        self.proc = None

    # lifecycle
    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> VLLMServer:
        """`launch()`, then `wait_healthy(timeout)`."""
        self.launch()
        return self.wait_healthy(timeout)

    def launch(self) -> VLLMServer:
        """Start the server process (its own session and process group); `proc` is set on return."""
        env = server_env()
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self

    def wait_healthy(self, timeout: float = DEFAULT_START_TIMEOUT) -> VLLMServer:
        """Wait until `GET /health` answers 200; the server's log tail in the error when it exits or times out."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with code {self.proc.returncode} during start-up.\n{self.log_tail()}"
                )
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.started_at = time.monotonic()
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.kill()
        raise RuntimeError(f"vLLM server not healthy after {timeout:.0f} s.\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGTERM, grace: float = 20.0):
        """Signal the server's process group (API server, engine core, workers); SIGKILL whatever is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session=True: the server leads its own process group
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # children that outlived the leader
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        log_file = getattr(self, "_log_file", None)
        if log_file is not None and not log_file.closed:
            log_file.close()

    # observation
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_text().splitlines()[-n:]
        return f"--- last {len(lines)} lines of {self.log_path} ---\n" + "\n".join(lines)

    def count_requests(self, path: str) -> int:
        """How many `POST <path>` requests the server's access log shows with status 200."""
        return len(re.findall(rf'"POST {re.escape(path)} HTTP/1\.1" 200', self.log_text()))

    def metrics(self) -> dict[str, float]:
        """Prometheus counters from /metrics, summed over labels (e.g. `vllm:generation_tokens_total`)."""
        import requests

        totals: dict[str, float] = {}
        for line in requests.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                totals[name] = totals.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return totals

    def greedy(self, prompt_ids: list[list[int]], max_tokens: int, model: str | None = None) -> list[list[int]]:
        """Greedy (temperature 0) completions of token-id prompts, through the same client the trainer uses; `model`:
        a LoRA adapter loaded on the server (default: the served base)."""
        from trl.generation.vllm_client import VLLMClient

        client = VLLMClient(base_url=self.url, connection_timeout=10)
        if model is not None:
            client.model = model
        out = client.generate(prompts=prompt_ids, n=1, temperature=0.0, max_tokens=max_tokens, logprobs=None)
        return out["completion_ids"]
