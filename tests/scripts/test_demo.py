"""scripts/demo.sh, the main job, runs as written: SeqKD, then GAD through a vLLM server in TRL's server mode.

The install step is skipped (GAD_TRL_DEMO_SKIP_INSTALL=1: the suite already runs inside the environment it builds)
and the session's vLLM server is reused (GAD_TRL_VLLM_URL) instead of starting a second one; steps are shortened."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared_server_restored(vllm_server, tiny_model_dir):
    """The session's server, given back with the tiny model's weights: the demo leaves its own student loaded, and
    other tests expect the server's initial weights (reloaded from disk, as the trainer's weight sync does)."""
    import requests

    yield vllm_server
    payload = {"method": "gad_reload_weights", "kwargs": {"weights_path": tiny_model_dir}}
    requests.post(f"{vllm_server.url}/collective_rpc", json=payload, timeout=120).raise_for_status()
    requests.post(f"{vllm_server.url}/reset_prefix_cache", timeout=60)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_trains_through_the_vllm_server(shared_server_restored, tmp_path):
    vllm_server = shared_server_restored
    env = dict(os.environ, GAD_TRL_DEMO_SKIP_INSTALL="1", GAD_TRL_VENV=str(Path(sys.executable).parents[1]),
               GAD_TRL_VLLM_URL=vllm_server.url, SEQKD_STEPS="2", MAX_STEPS="2", PYTHONPATH=str(REPO))
    completions_before = vllm_server.count_requests("/v1/completions")
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(tmp_path)], env=env, cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"using the running vLLM server at {vllm_server.url}" in result.stdout
    assert vllm_server.count_requests("/v1/completions") - completions_before >= 2  # generation went to the server
    assert (tmp_path / "tiny-gad" / "discriminator" / "model.safetensors").exists()
    assert (tmp_path / "tiny-gad" / "heldout_eval.json").exists()
