"""vLLM server mode without a running server: `gad-trl vllm-serve` command lines, the backend swap, and the
start-up error when no server answers (fast; the last ones need vLLM importable, not a server)."""

import socket
import time

import pytest
from trl.import_utils import is_vllm_available

from gad_trl import GADConfig
from gad_trl.vllm import serve_main
from gad_trl.vllm.serve import WORKER_EXTENSION, build_command, build_parser

needs_vllm = pytest.mark.skipif(not is_vllm_available(), reason="vLLM is not installed (scripts/install_env.sh)")


def _command(argv):
    args, extra = build_parser().parse_known_args(argv)
    return build_command(args, extra)


def test_serve_reload_command_has_worker_extension_and_no_nccl():
    cmd = _command(["--model", "m", "--port", "8123", "--weight-sync", "reload", "--max-num-seqs", "4"])
    assert cmd[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"] and cmd[4] == "m"
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--weight-transfer-config" not in cmd
    assert cmd[cmd.index("--worker-extension-cls") + 1] == WORKER_EXTENSION
    assert cmd[cmd.index("--logprobs-mode") + 1] == "processed_logprobs"
    assert cmd[-2:] == ["--max-num-seqs", "4"]  # passthrough, verbatim


def test_serve_nccl_command_is_trls():
    cmd = _command(["--model", "m", "--weight-sync", "nccl", "--enforce-eager"])
    assert cmd[cmd.index("--weight-transfer-config") + 1] == '{"backend": "nccl"}'
    assert "--worker-extension-cls" not in cmd and "--enforce-eager" in cmd


def test_serve_main_prints_exact_command(capsys):
    assert serve_main(["--model", "some/model", "--weight-sync", "reload", "--dry-run", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "VLLM_SERVER_DEV_MODE=1" in out
    assert "vllm.entrypoints.cli.main serve some/model" in out and "--seed 3" in out
    assert f"--worker-extension-cls {WORKER_EXTENSION}" in out


def test_patched_vllm_generation_swaps_only_in_server_mode(tmp_path):
    import trl.trainer.grpo_trainer as grpo_module

    from gad_trl.vllm import NCCLVLLMGeneration, ReloadVLLMGeneration, patched_vllm_generation

    original = grpo_module.VLLMGeneration

    def cfg(**kw):
        return GADConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)

    with patched_vllm_generation(cfg(use_vllm=True, vllm_mode="server", vllm_weight_sync="reload")):
        cls = grpo_module.VLLMGeneration
        assert issubclass(cls, ReloadVLLMGeneration) and issubclass(cls, original)
        assert cls.weight_sync_dir == str(tmp_path / "_vllm_weights")
    assert grpo_module.VLLMGeneration is original
    with patched_vllm_generation(
        cfg(use_vllm=True, vllm_mode="server", vllm_weight_sync="reload", vllm_weight_sync_dir=str(tmp_path / "w"))
    ):
        assert grpo_module.VLLMGeneration.weight_sync_dir == str(tmp_path / "w")
    with patched_vllm_generation(cfg(use_vllm=True, vllm_mode="server")):  # nccl: TRL's class + clearer errors
        cls = grpo_module.VLLMGeneration
        assert issubclass(cls, NCCLVLLMGeneration) and issubclass(NCCLVLLMGeneration, original)
        assert cls.request_timeout == 1800.0
    with patched_vllm_generation(cfg(use_vllm=True, vllm_mode="colocate", vllm_weight_sync="reload")):
        assert issubclass(grpo_module.VLLMGeneration, ReloadVLLMGeneration)  # in memory, no directory
    for args in (cfg(use_vllm=True, vllm_mode="colocate"), cfg(use_vllm=False)):
        with patched_vllm_generation(args):
            assert grpo_module.VLLMGeneration is original
    # restored even when the body raises
    with pytest.raises(KeyError), patched_vllm_generation(cfg(use_vllm=True, vllm_mode="server")):
        raise KeyError
    assert grpo_module.VLLMGeneration is original


def _unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_vllm
@pytest.mark.parametrize("weight_sync", ["reload", "nccl"])
def test_unreachable_server_fails_fast_with_start_command(tiny_model_dir, tmp_path, weight_sync):
    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows
    from gad_trl.vllm import VLLMServerError

    port = _unused_port()
    args = GADConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=8, use_vllm=True, vllm_mode="server", vllm_weight_sync=weight_sync,
        vllm_server_base_url=f"http://127.0.0.1:{port}", vllm_server_timeout=1,
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(VLLMServerError) as info:
        GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message
    expected = f"gad-trl vllm-serve --model {tiny_model_dir} --host 127.0.0.1 --port {port} --weight-sync {weight_sync}"
    # a float32 student on CPU: the server must not fall back to vLLM's CPU default (bfloat16)
    assert expected + " --dtype float32 --enforce-eager" in message, message
    assert isinstance(info.value, ConnectionError)


def _bare_reload_backend(tied: bool, server_info):
    from types import SimpleNamespace

    from gad_trl.vllm.generation import ReloadVLLMGeneration

    backend = ReloadVLLMGeneration.__new__(ReloadVLLMGeneration)  # no server: only the method-picking logic
    backend.server_base_url, backend.server_host, backend.server_port = "http://10.0.0.7:8001", "0.0.0.0", 8000
    backend.model = SimpleNamespace(name_or_path="org/student", config=SimpleNamespace(tie_word_embeddings=tied))

    def get_server_info():
        if isinstance(server_info, Exception):
            raise server_info
        return server_info

    backend.vllm_client = SimpleNamespace(get_server_info=get_server_info)
    return backend


def test_reload_backend_picks_the_servers_reload_rpc():
    from gad_trl.vllm import VLLMServerError
    from gad_trl.vllm.generation import WORKER_EXTENSION

    with_ext = {"parallel_config": {"worker_extension_cls": WORKER_EXTENSION}}
    without = {"parallel_config": {"worker_extension_cls": ""}, "device_config": {"device_type": "cpu"}}
    assert _bare_reload_backend(True, with_ext)._pick_reload_method() == "gad_reload_weights"
    assert _bare_reload_backend(False, without)._pick_reload_method() == "reload_weights"
    # tied embeddings + plain reload_weights = stale lm_head on the server: refuse, say how to restart
    with pytest.raises(VLLMServerError) as info:
        _bare_reload_backend(True, without)._pick_reload_method()
    msg = str(info.value)
    assert "http://10.0.0.7:8001" in msg and f"--worker-extension-cls {WORKER_EXTENSION}" in msg
    assert "gad-trl vllm-serve --model org/student --host 10.0.0.7 --port 8001 --weight-sync reload" in msg
    with pytest.raises(VLLMServerError, match="VLLM_SERVER_DEV_MODE=1"):
        _bare_reload_backend(False, RuntimeError("no dev mode"))._pick_reload_method()
    on_gpu = {"parallel_config": {"worker_extension_cls": ""}, "device_config": {"device_type": "cuda"}}
    assert _bare_reload_backend(True, on_gpu)._pick_reload_method() == "reload_weights"


def test_server_env_sizes_the_cpu_kv_cache_unless_set():
    from gad_trl.vllm.serve import server_env

    assert server_env({}, cuda=False) == {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert server_env({"VLLM_CPU_KVCACHE_SPACE": "8"}, cuda=False)["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert server_env({}, cuda=True) == {"VLLM_SERVER_DEV_MODE": "1"}


class _HungServer:
    """A local HTTP server that answers /health (the client's start-up check) and then never answers anything else:
    a vLLM server that is alive but stuck. With `models=True` it also answers the client's start-up `/v1/models`."""

    def __init__(self, models: bool = True):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/health"):
                    self.send_response(200)
                    self.end_headers()
                elif self.path.startswith("/v1/models") and models:
                    body = b'{"data": [{"id": "org/student"}]}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    release.wait(60)

            def do_POST(self):
                release.wait(60)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_vllm
def test_hung_server_times_out_into_a_clear_error():
    import requests
    from types import SimpleNamespace

    from gad_trl.vllm import VLLMServerError
    from gad_trl.vllm.generation import vllm_generation_class

    args = SimpleNamespace(use_vllm=True, vllm_mode="server", vllm_weight_sync="nccl", vllm_request_timeout=0.5,
                           output_dir="unused")
    cls = vllm_generation_class(args)
    assert cls.request_timeout == 0.5
    server = _HungServer()
    try:
        backend = cls.__new__(cls)  # only the client plumbing: no model, no NCCL group
        backend.server_base_url, backend.server_host, backend.server_port = server.url, "127.0.0.1", 0
        backend.server_timeout, backend.group_port = 5, 51216
        backend.model = SimpleNamespace(name_or_path="org/student", config=None)
        client = backend._connect_client()
        start = time.monotonic()
        with pytest.raises(requests.exceptions.RequestException) as info:
            client.session.post(f"{server.url}/generate/", json={})
        elapsed = time.monotonic() - start
        assert elapsed < 15, elapsed  # 3 tries (2 read retries) of 0.5 s plus back-off, not forever
        assert isinstance(info.value, (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError))
        error = backend._server_died("generating completions", info.value)
        assert isinstance(error, VLLMServerError) and server.url in str(error) and "resume_from_checkpoint" in str(error)
    finally:
        server.close()

    # Stuck already at start-up (the client's own GET /v1/models): a clear error too, not a hang.
    stuck = _HungServer(models=False)
    try:
        backend.server_base_url = stuck.url
        start = time.monotonic()
        with pytest.raises(VLLMServerError, match="vllm_request_timeout=0.5 s per request"):
            backend._connect_client()
        assert time.monotonic() - start < 15
    finally:
        stuck.close()


def test_reload_sync_deletes_its_weights_copy_and_nothing_else(tmp_path):
    """The end-of-training clean-up (GADTrainer.train calls it): the merged copy and a half-written one go; a folder
    with other files in it stays, with those files."""
    from types import SimpleNamespace

    from gad_trl.vllm.generation import WEIGHTS_FILE, ReloadVLLMGeneration

    def generation(folder, mode="server", main=True):
        gen = object.__new__(ReloadVLLMGeneration)  # the clean-up needs no server
        gen.mode, gen.weight_sync_dir, gen.accelerator = mode, str(folder), SimpleNamespace(is_main_process=main)
        return gen

    default = tmp_path / "_vllm_weights"
    default.mkdir()
    (default / WEIGHTS_FILE).write_bytes(b"w")
    (default / (WEIGHTS_FILE + ".partial")).write_bytes(b"p")
    generation(default, main=False).remove_synced_weights()  # another process: leaves it to the main one
    assert (default / WEIGHTS_FILE).exists()
    generation(default).remove_synced_weights()
    assert not default.exists()
    generation(default).remove_synced_weights()  # already gone: no error

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / WEIGHTS_FILE).write_bytes(b"w")
    (shared / "notes.txt").write_text("the user's")
    generation(shared).remove_synced_weights()
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]
