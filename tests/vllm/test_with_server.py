"""`gad_trl.vllm.with_server`: one command run next to a local server, the URL substituted, the server stopped however the command ends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.gad_helpers import REPO

# ------------------------------------------------------------------------------------------ with_server and signals
_FAKE_SERVER = """
import http.server, os, subprocess, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
worker = subprocess.Popen(["sleep", "300"])  # like vLLM's engine core: a child in the server's process group
open(sys.argv[1], "w").write(f"{os.getpid()} {worker.pid}")

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


# with_server with VLLMServer's command replaced by the fake server (same launcher: own session, /health polling)
_WRAPPER = """
import sys
from gad_trl.vllm import launcher, with_server
init = launcher.VLLMServer.__init__

def fake(self, *args, **kwargs):
    kwargs.pop("extra_args", None)
    init(self, *args, extra_args=(), **kwargs)
    self.command = [sys.executable, {fake!r}, {pids!r}, "--port", str(self.port)]

launcher.VLLMServer.__init__ = fake
sys.exit(with_server.main(sys.argv[1:]))
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waiting for its reaper: dead
    except FileNotFoundError:
        return True


def test_with_server_substitutes_the_url_and_returns_the_commands_exit_code(capfd):
    import sys

    from gad_trl.vllm.with_server import main

    code = main(["--url", "http://127.0.0.1:9", "--", sys.executable, "-c",
                 "import sys; print('got', sys.argv[1]); sys.exit(3)", "--vllm_server_base_url={url}"])
    assert code == 3
    assert "got --vllm_server_base_url=http://127.0.0.1:9" in capfd.readouterr().out


def test_with_server_adds_server_args_after_the_defaults(monkeypatch, capfd):
    from gad_trl.vllm import launcher
    from gad_trl.vllm.with_server import main

    started = []

    class Recorder:  # VLLMServer's interface, as main() uses it
        url = "http://127.0.0.1:9"

        def __init__(self, model, log, weight_sync, extra_args):
            started.append(extra_args)

        def launch(self):
            return self

        def wait_healthy(self, timeout):
            return self

        def kill(self):
            pass

    monkeypatch.setattr(launcher, "VLLMServer", Recorder)
    monkeypatch.setattr(launcher, "default_server_args", lambda: ("--dtype", "float32", "--max-model-len", "512"))
    code = main(["--model", "m", "--server-arg=--max-model-len=2048", "--server-arg=--enforce-eager", "--",
                 sys.executable, "-c", "pass"])
    assert code == 0
    # vLLM's parser keeps the last value of an option given twice: 2048 wins over the default 512.
    assert started == [("--dtype", "float32", "--max-model-len", "512", "--max-model-len=2048", "--enforce-eager")]
    with pytest.raises(SystemExit, match="would be lost"):
        main(["--url", "http://127.0.0.1:9", "--server-arg=--enforce-eager", "--", sys.executable, "-c", "pass"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_with_server_stops_its_server_when_it_is_signalled(tmp_path, sig):
    """`timeout 60 python -m gad_trl.vllm.with_server ...` left the vLLM server running on its port."""
    import signal
    import time

    fake, pids = tmp_path / "fake_server.py", tmp_path / "pids"
    fake.write_text(_FAKE_SERVER)
    wrapper = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER.format(fake=str(fake), pids=str(pids)), "--model", "m", "--log",
         str(tmp_path / "server.log"), "--", sys.executable, "-c", "import time; time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        for line in wrapper.stdout:
            if "vLLM server ready" in line:
                break
        server_pid, worker_pid = map(int, pids.read_text().split())
        wrapper.send_signal(getattr(signal, sig))
        rest = wrapper.communicate(timeout=60)[0]  # (EOF: the command, which shares the pipe, is gone too)
        assert wrapper.returncode == 128 + getattr(signal, sig)
        assert "vLLM server stopped" in rest
        deadline = time.monotonic() + 10
        while not (_gone(server_pid) and _gone(worker_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(server_pid) and _gone(worker_pid)
    finally:
        wrapper.kill()
        wrapper.wait()
        for pid in map(int, pids.read_text().split()) if pids.exists() else ():
            if not _gone(pid):
                os.kill(pid, 9)

