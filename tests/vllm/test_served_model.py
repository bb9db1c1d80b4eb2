"""The served-model check at connect (`gad_trl.vllm.served_model`), against a fake server that answers like vLLM's
OpenAI server (`GET /health`, `GET /v1/models` with `root`, `POST /tokenize`): a server started with another model
is refused before any weight sync, with both models named and the command that starts the right server. The same
check against a real vLLM server: tests/vllm/test_worker_extension.py::test_a_server_serving_another_model_is_refused."""

import logging
import shutil

import pytest
import requests
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from gad_trl.vllm.served_model import TOKENIZER_PROBE, check_served_model, same_model_source

from tests.helpers.fault_server import FaultServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def student(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def other_architecture(tiny_model_dir, path, **changes):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    for key, value in changes.items():
        setattr(config, key, value)
    config.save_pretrained(path)
    return str(path)


def check(server, student, name=None, **kwargs):
    model, tokenizer = student
    base = server.url.removesuffix("/v1")
    with requests.Session() as session:
        return check_served_model(session, base, model, name or model.name_or_path, tokenizer=tokenizer,
                                  start_command="gad-trl vllm-serve --model STUDENT", **kwargs)


def test_the_student_itself_passes_without_more_requests(student, tiny_model_dir):
    with FaultServer(model=tiny_model_dir) as server:
        assert check(server, student) is None
        assert server.requests == []  # no /tokenize needed
    with FaultServer(model="served-name", root=tiny_model_dir + "/") as server:  # --served-model-name: root counts
        assert check(server, student) is None


def test_another_architecture_is_refused_with_both_names_and_the_fix(student, tiny_model_dir, tmp_path):
    served = other_architecture(tiny_model_dir, tmp_path / "bigger", hidden_size=128, num_hidden_layers=3,
                                layer_types=["full_attention"] * 3)
    with FaultServer(model=served) as server:
        problem = check(server, student)
    assert problem is not None
    assert f"serves {served!r}" in problem and repr(tiny_model_dir) in problem
    assert "hidden_size: 128 (server) vs 64 (student)" in problem and "num_hidden_layers: 3 (server) vs 2" in problem
    assert "gad-trl vllm-serve --model STUDENT" in problem and "same --model" in problem


def test_the_same_architecture_elsewhere_passes_with_a_warning(student, tiny_model_dir, tmp_path, caplog):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    with FaultServer(model=str(copy)) as server, caplog.at_level(logging.WARNING, "gad_trl.vllm.served_model"):
        assert check(server, student) is None
    assert "the same architecture" in caplog.text and str(copy) in caplog.text


def test_a_model_only_the_server_can_read_is_checked_by_its_tokenizer(student, caplog):
    _, tokenizer = student
    ours = tokenizer.encode(TOKENIZER_PROBE, add_special_tokens=False)
    elsewhere = "/models/on-the-server-only/llama"
    with FaultServer(model=elsewhere, tokenize=lambda text: [t + 1 for t in ours]) as server:
        problem = check(server, student)
        assert server.requests[-1] == {"prompt": TOKENIZER_PROBE, "add_special_tokens": False, "model": elsewhere}
    assert problem is not None and "their tokenizers differ" in problem and elsewhere in problem

    with caplog.at_level(logging.WARNING, "gad_trl.vllm.served_model"):
        with FaultServer(model=elsewhere, tokenize=lambda text: ours) as server:
            assert check(server, student) is None
        assert "the same tokenizer" in caplog.text
        with FaultServer(model=elsewhere, tokenize=None) as server:  # no /tokenize: can't tell, warn
            assert check(server, student) is None
        assert "could not be compared" in caplog.text


def test_same_model_source():
    snapshot = "/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/7ae557604adf67be50417f5"
    assert same_model_source("Qwen/Qwen2.5-0.5B-Instruct", snapshot)
    assert same_model_source(snapshot + "/", "Qwen/Qwen2.5-0.5B-Instruct")
    assert not same_model_source("Qwen/Qwen2.5-1.5B-Instruct", snapshot)
    assert not same_model_source("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")
    assert not same_model_source(None, "x")


def test_the_trainer_backend_refuses_before_any_weight_sync(student, tiny_model_dir, tmp_path):
    """`_connect_client` (both weight-sync backends go through it, before init_communicator / the first reload)."""
    pytest.importorskip("vllm")
    from gad_trl.vllm.generation import ReloadVLLMGeneration, ServedModelError, VLLMServerError

    served = other_architecture(tiny_model_dir, tmp_path / "wider", hidden_size=96)
    backend = object.__new__(ReloadVLLMGeneration)
    model, tokenizer = student
    with FaultServer(model=served) as server:
        base = server.url.removesuffix("/v1")
        port = int(base.rsplit(":", 1)[1])
        vars(backend).update(server_base_url=base, server_host="127.0.0.1", server_port=port, group_port=51216,
                             server_timeout=5, request_timeout=10, model=model, processing_class=tokenizer,
                             accelerator=None)
        with pytest.raises(ServedModelError) as info:
            backend._connect_client()
    text = str(info.value)
    assert isinstance(info.value, VLLMServerError)
    assert f"serves {served!r}" in text and "hidden_size: 96 (server) vs 64 (student)" in text
    assert f"gad-trl vllm-serve --model {tiny_model_dir}" in text and "--weight-sync reload" in text
