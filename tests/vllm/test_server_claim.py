"""`gad_trl.vllm.server_claim`: one training run per vLLM server."""

from __future__ import annotations

import logging

import pytest

from tests.helpers.gad_helpers import make_trainer


# ------------------------------------------------------------------------------------------ one run per vLLM server
def _claim(server, holder, **kwargs):
    import requests

    from gad_trl.vllm.server_claim import ServerClaim

    return ServerClaim(requests.Session(), server.url.removesuffix("/v1"), holder, **kwargs)


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

