"""Reliability issue #30: a run's output_dir lock (deleted, replaced or symlinked lock files; `gad-trl soda` / `seqkd`
take it too), tools that hang or return too much during training, secrets in errors, the orphaned server of
`with_server`, two runs sharing one vLLM server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.helpers.gad_helpers import TINY_SEQKD, make_trainer, scripted_tool_rollout
from tests.vllm.test_generation import needs_vllm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SODA = os.path.join(REPO, "recipes", "tiny", "soda.yaml")


def _hold_lock_in_another_process(out):
    """A process holding `out`'s lock (like a running run); returns it once it holds it."""
    out.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from gad_trl.run_folder import OutputDirLock
        OutputDirLock({str(out)!r}).acquire(); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "locked"
    return holder


# ------------------------------------------------------------------------------------------ the output_dir lock


@pytest.mark.timeout(300)
def test_a_lock_deleted_during_training_is_retaken_and_the_run_ends_and_saves(tiny_model_dir, tmp_path, caplog):
    """Deleting .gad_trl.lock under a run made its release crash (FileNotFoundError) before the final save."""
    from transformers import TrainerCallback

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    lock_file = out / ".gad_trl.lock"
    trainer = make_trainer(tiny_model_dir, out, max_steps=3)
    locked_after = []

    class DeleteTheLock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                lock_file.unlink()
            elif state.global_step == 2:  # after step 1's log: re-taken
                locked_after.append(_locked(OutputDirLock(str(out))))

    trainer.add_callback(DeleteTheLock())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "was deleted while this run held it" in caplog.text
    assert locked_after == [True]  # a second run is refused again
    assert not lock_file.exists()
    trainer.save_model(str(out))
    assert (out / "model.safetensors").exists()


def _locked(lock) -> bool:
    try:
        lock.acquire()
    except RuntimeError:
        return True
    lock.release()
    return False


def test_another_run_on_a_deleted_lock_is_reported_and_its_lock_left_alone(tmp_path, caplog):
    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    ours = OutputDirLock(str(out))
    ours.acquire()
    (out / ".gad_trl.lock").unlink()
    other = _hold_lock_in_another_process(out)
    try:
        with caplog.at_level(logging.ERROR):
            assert f"pid {other.pid}" in ours.verify()
        assert "ANOTHER RUN" in caplog.text and "own output_dir" in caplog.text
        ours.release()  # never raises, and leaves the other run's lock in place
        assert f"pid {other.pid}" in (out / ".gad_trl.lock").read_text()
        with pytest.raises(RuntimeError, match="in use by another run"):
            OutputDirLock(str(out)).acquire()
    finally:
        other.kill()
        other.wait()


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / ".gad_trl.lock").symlink_to(target)
    with pytest.raises(RuntimeError, match="symbolic link.*Delete the link"):
        OutputDirLock(str(out)).acquire()
    assert target.read_text() == "keep me"


def test_a_command_whose_output_dir_another_run_took_saves_then_fails_naming_it(tmp_path):
    import types

    from gad_trl.cli.utils import train_and_save
    from gad_trl.run_folder import hold_output_dir

    out = tmp_path / "run"
    saved, others = [], []

    class Trainer:  # a trainer whose run sees its lock file deleted and another run start in its output_dir
        callback_handler = types.SimpleNamespace(callbacks=[])
        accelerator = types.SimpleNamespace(print=lambda *args: None)

        def add_callback(self, callback):
            self.callback_handler.callbacks.append(callback)

        def train(self, resume_from_checkpoint=None):
            (out / ".gad_trl.lock").unlink()
            others.append(_hold_lock_in_another_process(out))

        def save_model(self, output_dir):
            saved.append(output_dir)

    args = types.SimpleNamespace(output_dir=str(out), resume_from_checkpoint=None, push_to_hub=False)
    try:
        with hold_output_dir(str(out)), pytest.raises(RuntimeError, match=r"The model is saved to .*another run "
                                                                          r"\(pid \d+ on .*own output_dir"):
            train_and_save(Trainer(), types.SimpleNamespace(dataset_name=None), args, "gad")
        assert saved == [str(out)]  # saved first
        assert f"pid {others[0].pid}" in (out / ".gad_trl.lock").read_text()  # the other run's lock is left alone
    finally:
        for other in others:
            other.kill()
            other.wait()


@pytest.mark.parametrize("command, recipe", [("soda", TINY_SODA), ("seqkd", TINY_SEQKD)])
def test_soda_and_seqkd_take_the_output_dir_lock_before_anything_else(tmp_path, command, recipe):
    """Two identical `gad-trl soda` runs both ran (and wrote one SODA sample cache together)."""
    import importlib

    out = tmp_path / "run"
    holder = _hold_lock_in_another_process(out)
    try:
        run = importlib.import_module(f"gad_trl.cli.{command}").run
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} "):
            run(["--config", recipe, "--output_dir", str(out), "--report_to", "none",
                 "--model_name_or_path", str(tmp_path / "no-model")])  # refused before the model is looked at
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------------------ tools during training
_RELEASE = threading.Event()  # set at the end of the test: the hung tool's thread then returns


def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    if a == 1:  # a tool that never returns (within the test)
        _RELEASE.wait(60)
        return "late"
    if a == 2:  # a tool that returns megabytes
        return "x" * 2_000_000
    return str(a + b)


@pytest.mark.timeout(300)
def test_training_tool_calls_time_out_and_huge_results_are_cut(tool_caller_dir, tmp_path, caplog):
    """A tool that never returned hung the run forever; a 2 MB result went whole into the rollout."""
    import time

    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_tool_rows
    from tests.test_trainer_agentic import tool_args

    rows = tiny_tool_rows(4, seed=1)
    trainer = GADTrainer(tool_caller_dir, args=tool_args(tmp_path, tool_timeout=1.0, max_tool_result_chars=40,
                                                         max_completion_length=256),
                         train_dataset=Dataset.from_list(rows), tools=[add])
    tok = trainer.processing_class
    prompt_texts = [tok.decode(tok.apply_chat_template(r["prompt"], tools=[add], add_generation_prompt=True,
                                                       tokenize=True, return_dict=False)) for r in rows]

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for ids in prompt_ids:  # row i calls add(a=i+1, b=5) first, then answers
            text = tok.decode(ids)
            i = next(k for k, p in enumerate(prompt_texts) if text.startswith(p))
            turn = (f'<tool_call>\n{{"name": "add", "arguments": {{"a": {i + 1}, "b": 5}}}}\n</tool_call>'
                    if text == prompt_texts[i] else "done")
            out.append(tok(turn, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out, None

    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            (_, _, _, completions, *_), metrics = scripted_tool_rollout(trainer, scripted, [r["prompt"] for r in rows],
                                                                        [add])
    finally:
        _RELEASE.set()
    assert time.monotonic() - start < 30
    results = [c[1]["content"] for c in completions]
    assert "timed out" in results[0] and "tool_timeout" in results[0]  # TRL's error result for a raising tool
    assert results[1].startswith("x" * 40) and "cut: the tool returned 2000000 characters" in results[1]
    assert len(results[1]) < 200 and results[2] == "8" and [m["content"] for m in completions[3][-1:]] == ["done"]
    assert metrics["tools/timeouts"] == [1.0] and metrics["tools/cut_results"] == [1.0]
    assert metrics["tools/failure_frequency"][-1] > 0
    assert "tool_timeout=1 s" in caplog.text


def test_generate_teacher_cuts_huge_tool_results_with_the_same_setting():
    from gad_trl.workflow.teacher import TeacherGenerationArguments
    from gad_trl.workflow.tool_calling import DEFAULT_MAX_TOOL_RESULT_CHARS, run_tool_call

    call = {"function": {"name": "add", "arguments": '{"a": 2, "b": 0}'}}
    content = run_tool_call(call, {"add": add}, timeout=5, max_result_chars=100)
    assert content.startswith("x" * 100) and len(content) < 200 and "max_tool_result_chars=100" in content
    assert len(run_tool_call(call, {"add": add}, timeout=5)) < DEFAULT_MAX_TOOL_RESULT_CHARS + 100  # capped by default
    fields = TeacherGenerationArguments.__dataclass_fields__
    from gad_trl import GADConfig

    for name in ("tool_timeout", "max_tool_result_chars"):  # one name, one default, both commands
        assert fields[name].default == GADConfig.__dataclass_fields__[name].default


# ------------------------------------------------------------------------------------------ secrets in errors and logs
KEY = "sk-proj-Q7abcdefGHIJ1234567890xyzKLMN"  # what a user pastes into --api_key_env by mistake


def test_a_key_given_as_api_key_env_is_refused_without_echoing_it(tmp_path, caplog, capsys):
    from gad_trl.config import SODAConfig
    from gad_trl.workflow.evaluation import EvaluationArguments
    from gad_trl.workflow.openai_chat import make_client
    from gad_trl.workflow.teacher import TeacherGenerationArguments

    builders = [
        lambda: TeacherGenerationArguments(dataset_name="d.jsonl", output=str(tmp_path / "o.jsonl"), api_key_env=KEY),
        lambda: EvaluationArguments(dataset_name="d.jsonl", judge_api_key_env=KEY),
        lambda: SODAConfig(output_dir=str(tmp_path), rejected_base_url="http://127.0.0.1:9/v1",
                           rejected_api_key_env=KEY, report_to="none"),
        lambda: make_client("http://127.0.0.1:9/v1", KEY),
    ]
    with caplog.at_level(logging.DEBUG):
        for build in builders:
            with pytest.raises(ValueError, match="NAME of the environment variable.*looks like an API key") as info:
                build()
            assert KEY not in str(info.value)
    assert KEY not in caplog.text and KEY not in "".join(capsys.readouterr())
    with pytest.raises(ValueError, match="not an environment variable name"):
        make_client("http://127.0.0.1:9/v1", "MY KEY")
    make_client("http://127.0.0.1:9/v1", "GAD_TRL_TEST_UNSET_KEY")  # a variable name: fine (unset: no key sent)


@needs_vllm
@pytest.mark.parametrize("weight_sync", ["reload", "nccl"])
def test_a_password_in_the_server_url_is_not_printed_when_no_server_answers(tiny_model_dir, tmp_path, weight_sync):
    import socket
    import traceback

    from datasets import Dataset

    from gad_trl import GADConfig, GADTrainer
    from gad_trl.tiny import tiny_gad_rows
    from gad_trl.vllm import VLLMServerError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = GADConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=8, use_vllm=True, vllm_mode="server", vllm_weight_sync=weight_sync,
        vllm_server_base_url=f"http://trainer:hunter2secret@127.0.0.1:{port}", vllm_server_timeout=1,
    )  # fmt: skip
    with pytest.raises(VLLMServerError) as info:
        GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    printed = "".join(traceback.format_exception(info.value))  # ours and TRL's error it wraps
    assert "hunter2secret" not in printed
    assert f"http://trainer:<redacted>@127.0.0.1:{port}" in str(info.value)
    assert "can't be reached at http://trainer:<redacted>@" in printed  # TRL's message, kept, redacted


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


# ------------------------------------------------------------------------------------------ one run per vLLM server
def _claim(server, holder, **kwargs):
    import requests

    from gad_trl.vllm.server_claim import ServerClaim

    return ServerClaim(requests.Session(), server.url.removesuffix("/v1"), holder, **kwargs)


def test_a_second_run_is_refused_a_server_another_run_holds_until_it_ends_or_dies():
    import time

    from gad_trl.vllm.serve import WORKER_EXTENSION
    from tests.helpers.fault_server import FaultServer

    with FaultServer(worker_extension_cls=WORKER_EXTENSION, workers=2) as server:  # 2 workers: a TP=2 server
        first = _claim(server, "run A", ttl=1.0, interval=0.1)
        assert first.acquire("URL") is None
        second = _claim(server, "run B", ttl=1.0, interval=0.1)
        time.sleep(1.5)  # past the ttl: the first run's heartbeat keeps its claim
        refused = second.acquire("URL")
        assert "in use by another training run (run A, renewed 0 s ago)" in refused
        assert "train on each other's samples" in refused and "its own server" in refused
        first.release()  # the first run ended
        assert second.acquire("URL") is None
        second._stop.set()  # the second run is killed: nothing renews or releases its claim
        third = _claim(server, "run C", ttl=1.0)
        assert "run B" in third.acquire("URL")
        time.sleep(1.2)
        assert third.acquire("URL") is None  # a killed run's claim expires
        assert second.renew("URL") is False and "lapsed" in second.lost and "run C" in second.lost
        third.release()


def _bare_backend(server, holder):
    import types

    import requests

    from gad_trl.vllm.generation import ReloadVLLMGeneration

    backend = ReloadVLLMGeneration.__new__(ReloadVLLMGeneration)  # the server-side state only: no model, no client
    root = server.url.removesuffix("/v1")
    backend.mode, backend.server_base_url, backend.request_timeout = "server", root, 5.0
    session = requests.Session()
    backend.vllm_client = types.SimpleNamespace(session=session,
                                                get_server_info=lambda: session.get(f"{root}/server_info").json())
    return backend


@pytest.mark.timeout(300)
def test_training_refuses_a_server_claimed_by_another_run(tiny_model_dir, tmp_path, caplog):
    from gad_trl.vllm import ServerInUseError
    from gad_trl.vllm.serve import WORKER_EXTENSION
    from tests.helpers.fault_server import FaultServer

    with FaultServer(worker_extension_cls=WORKER_EXTENSION) as server:
        other = _bare_backend(server, "other")
        assert other.claim_server("pid 1 on elsewhere, output_dir /runs/a") is None
        trainer = make_trainer(tiny_model_dir, tmp_path / "run", max_steps=1)
        trainer.use_vllm, trainer.vllm_generation = True, _bare_backend(server, "this")  # as with vllm_mode='server'
        with pytest.raises(ServerInUseError, match=r"in use by another training run \(pid 1 on elsewhere, output_dir "
                                                   r"/runs/a.*its own server"):
            trainer.train()
        assert trainer.state.global_step == 0
        other._claim.lost = "lost it"  # the other run's claim was taken over: it stops at its next request
        with pytest.raises(ServerInUseError, match="lost it"):
            other.sync_weights()
        other._claim.lost = None
        other.release_server()
        assert trainer.vllm_generation.claim_server("this run") is None  # free again
        trainer.vllm_generation.release_server()
    with FaultServer() as plain, caplog.at_level(logging.WARNING):  # no gad_trl worker extension: can't claim
        assert _bare_backend(plain, "x").claim_server("run") is None
    assert "without gad_trl's worker extension, so this run cannot claim it" in caplog.text


@pytest.mark.timeout(900)
def test_the_claim_goes_through_a_real_vllm_server_and_a_training_run_releases_it(vllm_server, tiny_model_dir,
                                                                                  tmp_path):
    """The claim RPC reaches a real server's workers (gad-trl vllm-serve --weight-sync reload); a run that trained
    on it leaves it free for the next."""
    import requests

    from gad_trl.vllm import ServerInUseError
    from gad_trl.vllm.server_claim import ServerClaim

    def trainer_for(out):
        return make_trainer(tiny_model_dir, out, max_steps=1, use_vllm=True, vllm_mode="server",
                            vllm_server_base_url=vllm_server.url, vllm_weight_sync="reload", vllm_server_timeout=30,
                            use_cpu=True)

    other = ServerClaim(requests.Session(), vllm_server.url, "pid 1 on elsewhere, output_dir /runs/a", ttl=600)
    assert other.acquire(vllm_server.url) is None
    try:
        with pytest.raises(ServerInUseError, match=r"in use by another training run \(pid 1 on elsewhere"):
            trainer_for(tmp_path / "refused").train()
    finally:
        other.release()
    trainer = trainer_for(tmp_path / "run")
    trainer.train()
    assert trainer.state.global_step == 1
    assert other.acquire(vllm_server.url) is None  # released by the run that ended
    other.release()
