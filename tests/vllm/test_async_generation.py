"""One-step-off generation (`GADConfig.async_generation`, gad_trl.vllm.async_generation).

Unit tests of the pieces (the look-ahead iterator, the prefetching client, the config checks), then real CPU vLLM
server runs: async training trains on one-step-stale batches generated in the background, a resumed async run restarts
with one synchronous generation, and a server killed during a background request fails the run with the clear error.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests
from datasets import Dataset
from transformers import TrainerCallback

from gad_trl import GADConfig, GADTrainer
from gad_trl.tiny import tiny_gad_rows
from gad_trl.vllm.async_generation import Lookahead, PrefetchingClient, request_key


# ---------------------------------------------------------------------------------------------------------- unit tests
def test_async_lookahead_yields_the_same_items_in_the_same_order():
    items = [object() for _ in range(7)]
    it = Lookahead(iter(items))
    assert next(it) is items[0] and it.position_of(items[0]) == 0
    assert it.peek(3) is items[3] and it.peek(1) is items[1]  # looks ahead without consuming
    assert it.peek(0) is None  # already yielded
    assert [next(it) for _ in range(6)] == items[1:]
    assert it.peek(7) is None and it.position_of(items[5]) == 5
    with pytest.raises(StopIteration):
        next(it)


class FakeClient:
    """A VLLMClient double: records calls; `generate` blocks until `release` is set."""

    def __init__(self, fail=None):
        self.calls, self.release, self.fail = [], threading.Event(), fail
        self.session = "session"

    def generate(self, prompts, features=None, **sampling):
        self.calls.append(("generate-start", [tuple(p) for p in prompts]))
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        self.calls.append(("generate-end", [tuple(p) for p in prompts]))
        return {"completion_ids": [[len(p)] for p in prompts]}

    def update_named_params(self, *a):
        self.calls.append(("update", None))


SAMPLING = {"n": 2, "temperature": 1.0, "max_tokens": 4}


def test_async_prefetched_request_is_returned_and_weight_sync_waits_for_it():
    fake = FakeClient()
    client = PrefetchingClient(fake)
    client.submit([[1, 2], [3]], SAMPLING, launched_at_step=4)
    time.sleep(0.2)
    assert fake.calls == [("generate-start", [(1, 2), (3,)])]  # running in the background
    done = threading.Event()

    def sync():
        client.update_named_params()  # any other use of the client waits for the request in flight
        done.set()

    threading.Thread(target=sync, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set(), "weights were pushed while the server was generating"
    fake.release.set()
    assert done.wait(5)
    assert [c[0] for c in fake.calls] == ["generate-start", "generate-end", "update"]
    # The same request is answered from the prefetch, without a second server call.
    assert client.generate(prompts=[[1, 2], [3]], features=None, **SAMPLING) == {"completion_ids": [[2], [1]]}
    assert len([c for c in fake.calls if c[0] == "generate-start"]) == 1 and client.last_hit[0] == 4
    assert client.last_hit[1] >= 0.2  # the time the weight sync blocked on the request counts as the wait
    # Another request (other prompts or settings) goes to the server.
    client.generate(prompts=[[1, 2], [3]], features=None, **{**SAMPLING, "n": 1})
    assert len([c for c in fake.calls if c[0] == "generate-start"]) == 2
    assert request_key([[1]], None, SAMPLING) != request_key([[1]], None, {**SAMPLING, "temperature": 0.5})


def test_async_background_failure_is_raised_on_the_training_thread_once():
    fake = FakeClient(fail=requests.exceptions.ConnectionError("connection refused"))
    fake.release.set()

    class Named(ConnectionError):
        pass

    client = PrefetchingClient(fake, on_error=lambda exc: Named(f"server died: {exc}"))
    client.submit([[1]], SAMPLING, launched_at_step=0)
    with pytest.raises(Named, match="server died: connection refused"):
        client.update_named_params()
    assert client.pending is None  # reported once


def test_async_generation_needs_server_mode_and_the_is_correction(tmp_path):
    with pytest.raises(ValueError, match="async_generation .* needs use_vllm=True and vllm_mode='server'"):
        GADConfig(output_dir=str(tmp_path), async_generation=True)
    with pytest.raises(ValueError, match="vllm_mode='server'"):
        GADConfig(output_dir=str(tmp_path), async_generation=True, use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ValueError, match="vllm_importance_sampling_correction"):
        GADConfig(output_dir=str(tmp_path), async_generation=True, use_vllm=True, vllm_mode="server",
                  vllm_importance_sampling_correction=False)
    assert GADConfig(output_dir=str(tmp_path)).async_generation is False  # off by default


# ------------------------------------------------------------------------------------------------ real vLLM server
MAX_TOKENS = 8


def make_trainer(model, output_dir, server, rows=16, peft_config=None, **overrides):
    kwargs = dict(
        output_dir=str(output_dir), report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=MAX_TOKENS, max_steps=3,
        logging_steps=1, save_strategy="no", learning_rate=1e-3, discriminator_learning_rate=1e-3,
        warn_on_unhealthy_metrics=False, use_vllm=True, vllm_mode="server", vllm_weight_sync="reload",
        vllm_server_base_url=server.url, vllm_server_timeout=10, async_generation=True,
        vllm_importance_sampling_mode="token_truncate",
    )  # fmt: skip
    kwargs.update(overrides)
    dataset = Dataset.from_list(tiny_gad_rows(rows, seed=0))
    return GADTrainer(model, args=GADConfig(**kwargs), train_dataset=dataset, peft_config=peft_config)


class EventLog(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_async_training_on_the_real_server(vllm_server, tiny_model_dir, tmp_path):
    """4 steps: step 1 generated in turn, steps 2-4 from background requests sent one step earlier; the server
    answered exactly 4 generation requests (none wasted after the last step) and reloaded weights before each."""
    trainer = make_trainer(tiny_model_dir, tmp_path, vllm_server, max_steps=4)
    seen = []
    update = trainer.discriminator_component.update

    def spy(*a, **k):  # the discriminator update runs while the next batch is being generated
        pending = trainer.one_step_off_generation.client.pending
        seen.append(pending is not None)
        return update(*a, **k)

    trainer.discriminator_component.update = spy
    completions_before = vllm_server.count_requests("/v1/completions")
    trainer.train()
    assert trainer.state.global_step == 4
    assert vllm_server.count_requests("/v1/completions") - completions_before == 4
    assert seen == [True, True, True, False]  # a request was in flight during every update but the last
    logged = [h for h in trainer.state.log_history if "async_generation/staleness" in h]
    assert [h["async_generation/staleness"] for h in logged] == [0.0, 1.0, 1.0, 1.0]
    assert [h["async_generation/prefetched"] for h in logged] == [0.0, 1.0, 1.0, 1.0]
    # One step stale, not more: the server's log-probs are those of the previous step's weights, close to the
    # learner's (lr 1e-3 over one step), and TRL's IS correction sees them.
    for h in logged:
        assert h["sampling/sampling_logp_difference/mean"] < 0.2, h
        assert "sampling/importance_sampling_ratio/mean" in h
    assert trainer.one_step_off_generation.client.pending is None  # nothing left in flight after train()


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_async_resume_restarts_with_one_synchronous_generation(vllm_server, tiny_model_dir, tmp_path):
    """With a LoRA student and a reference model (beta > 0) as well: the async path changes neither."""
    from peft import LoraConfig

    lora = dict(peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
                beta=1e-3)
    out = tmp_path / "run"
    first = make_trainer(tiny_model_dir, out, vllm_server, max_steps=2, save_strategy="steps", save_steps=1, **lora)
    first.train()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [h["async_generation/prefetched"] for h in first.state.log_history if "loss" in h] == [0.0, 1.0]
    assert all("kl" in h for h in first.state.log_history if "loss" in h)  # the reference model took part
    del first
    resumed = make_trainer(tiny_model_dir, out, vllm_server, max_steps=4, save_strategy="steps", save_steps=1, **lora)
    completions_before = vllm_server.count_requests("/v1/completions")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert vllm_server.count_requests("/v1/completions") - completions_before == 2  # steps 3 and 4 only
    new = [h for h in resumed.state.log_history if "async_generation/staleness" in h and h["step"] > 2]
    # Step 3: the pipeline restarts with one generation in turn; step 4 comes from the background again.
    assert [(h["step"], h["async_generation/prefetched"]) for h in new] == [(3, 0.0), (4, 1.0)]
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4]


class KillDuringUpdate(TrainerCallback):
    """Kills the server at the end of step 1, while the background request for step 2 is (or was) in flight."""

    def __init__(self, server):
        self.server, self.killed_at = server, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and self.killed_at is None:
            self.server.kill(sig=signal.SIGKILL, grace=10)
            self.killed_at = time.monotonic()


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_async_server_killed_mid_request_fails_with_the_clear_error(vllm_server_factory, tiny_model_dir, tmp_path):
    from gad_trl.vllm import VLLMServerError

    doomed = vllm_server_factory(tiny_model_dir)
    # Longer completions so the background request is still running when the server dies.
    trainer = make_trainer(tiny_model_dir, tmp_path, doomed, max_steps=4, max_completion_length=64,
                           generation_kwargs={"min_tokens": 64})
    killer = KillDuringUpdate(doomed)
    trainer.add_callback(killer)
    with pytest.raises(VLLMServerError) as info:
        trainer.train()
    assert killer.killed_at is not None and time.monotonic() - killer.killed_at < 60, "not detected promptly"
    message = str(info.value)
    assert doomed.url in message and "gad-trl vllm-serve --model" in message and "resume_from_checkpoint" in message
    assert trainer.state.global_step == 1


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_async_two_processes_with_the_server(vllm_server, tiny_model_dir, tmp_path):
    """2 CPU processes (gloo) share one server, the discriminator sharded with FSDP2 over them: the prompts of both
    are gathered for each background request, and both ranks train on the prefetched batches, with one
    discriminator."""
    from tests.test_cpu_distributed import run_two_processes

    completions_before = vllm_server.count_requests("/v1/completions")
    ranks = run_two_processes(tiny_model_dir, tmp_path / "async", "--async-vllm", vllm_server.url, "--fsdp2")
    assert all(r["steps"] == 3 for r in ranks)
    assert vllm_server.count_requests("/v1/completions") - completions_before == 3  # one request per step, both ranks
    assert all(r["sharded"] for r in ranks)
    for r in ranks:
        assert r["prefetched"] == [0.0, 1.0, 1.0] and r["staleness"] == [0.0, 1.0, 1.0]


def test_async_estimate_memory_counts_the_held_batch(capsys, tmp_path):
    import gad_trl.cli.main as cli_main
    from gad_trl.memory.estimator import RunSettings
    from tests.cli.test_estimate_memory import RECIPE_7B

    out_json = tmp_path / "est.json"
    argv = ["estimate-memory", "--config", RECIPE_7B, "--num_gpus", "8", "--output_json", str(out_json)]
    assert cli_main.main(argv) == 0
    assert "async_generation" not in capsys.readouterr().out
    assert cli_main.main([*argv, "--async_generation", "true"]) == 0
    text = capsys.readouterr().out
    settings = json.loads(out_json.read_text())["setups"][0]["settings"]
    assert settings["async_generation"] is True
    held = RunSettings(**settings)
    completions = held.generation_batch * 8
    assert held.held_batch_bytes >= completions * held.max_completion_length * 12  # at least ids + float32 logprobs
    assert (f"one generation batch ({completions} completions) held in host memory by the main process while the "
            f"next step trains: about {held.held_batch_bytes / 2**20:.1f} MiB") in text


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_async_zero3_launch_with_the_server(vllm_server, tmp_path):
    """`accelerate launch` with ZeRO-3 (2 CPU processes, DeepSpeed on CPU) through `gad-trl gad`: the weight sync
    gathers the ZeRO-3 shards on the training thread, the prompts of both processes go out in one background request."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    from gad_trl.tiny import save_tiny_model
    from tests.cli.test_launch import launch, write_tiny_data

    model_dir = save_tiny_model(tmp_path / "model", seed=0)
    completions_before = vllm_server.count_requests("/v1/completions")
    launch("zero3", model_dir, write_tiny_data(tmp_path), tmp_path, "--async-vllm", vllm_server.url)
    assert vllm_server.count_requests("/v1/completions") - completions_before == 3
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["distributed_type"] == "DistributedType.DEEPSPEED" and result["num_processes"] == 2
        assert result["sharded"] and result["global_step"] == 3
        # 16 rows = 2 steps an epoch: step 3 opens epoch 1, whose first batch is generated in turn (docs/vllm.md).
        assert result["prefetched"] == [0.0, 1.0, 0.0]
