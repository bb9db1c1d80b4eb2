"""GADTrainer against a real vLLM server (`gad-trl vllm-serve --weight-sync reload`, CPU): generation really comes
from the server, the updated student reaches it every step, and a dying server gives a clear error and a resumable
run. Skipped with the reason where vLLM can't be imported or the server can't start (see tests/helpers/vllm_server.py)."""

import json
import signal
import time

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from gad_trl import GADConfig, GADTrainer
from gad_trl.tiny import tiny_gad_rows

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MAX_TOKENS = 8


def make_args(output_dir, server, **overrides):
    kwargs = dict(
        output_dir=str(output_dir), report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=MAX_TOKENS, max_steps=3,
        logging_steps=1, save_strategy="no", learning_rate=1e-2, discriminator_learning_rate=1e-3,
        warn_on_unhealthy_metrics=False,
        use_vllm=True, vllm_mode="server", vllm_weight_sync="reload", vllm_server_base_url=server.url,
        vllm_server_timeout=10,
    )  # fmt: skip
    kwargs.update(overrides)
    return GADConfig(**kwargs)


def make_trainer(model, output_dir, server, rows=8, **overrides):
    dataset = Dataset.from_list(tiny_gad_rows(rows, seed=0))
    return GADTrainer(model, args=make_args(output_dir, server, **overrides), train_dataset=dataset)


def hf_greedy(model, prompt_ids, max_tokens=MAX_TOKENS):
    """transformers' greedy completion of each prompt (one at a time: no padding), cut after EOS like vLLM."""
    model.eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_tokens)
            out.append(gen[0, len(ids) :].tolist())
    return out


# How far (in log-probability) a token may sit below the argmax and still count as a greedy choice. vLLM's CPU kernels
# and transformers' differ by ~1e-3 in log-prob (see the sampling-logp bounds below), so on a near-tie (a random tiny
# model has many) the two greedy decoders can legitimately pick different tokens; a stale server is off by ~0.2-1.0.
GREEDY_TOLERANCE = 0.02


def greedy_deficit(model, prompt_ids, completions):
    """For each (prompt, completion): the largest gap, over the completion's tokens, between the model's best
    log-prob at that position and the log-prob of the token chosen. 0 for the model's own greedy output; below
    GREEDY_TOLERANCE for the greedy output of another implementation of the same weights."""
    model.eval()
    deficits = []
    with torch.no_grad():
        for ids, completion in zip(prompt_ids, completions, strict=True):
            logits = model(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1].float()
            logps = torch.log_softmax(logits, dim=-1)
            chosen = logps.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
            deficits.append((logps.max(dim=-1).values - chosen).max().item())
    return deficits


def assert_greedy_path_of(model, prompt_ids, server_out, hf_out):
    """Every token of the server's greedy output is within GREEDY_TOLERANCE of the trainer's best token: where the
    trainer's model has a clear winner that means the same token (so the output equals transformers' greedy output
    until two tokens tie); on a near-tie either token passes."""
    deficits = greedy_deficit(model, prompt_ids, server_out)
    assert max(deficits) < GREEDY_TOLERANCE, f"deficits {deficits}\nserver {server_out}\ntransformers {hf_out}"


def prompt_ids_of(trainer, n=3):
    tok = trainer.processing_class
    rows = tiny_gad_rows(n, seed=1)
    return [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False) for r in rows]


def test_training_generates_on_the_server(vllm_server, tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, vllm_server, max_steps=3)
    from gad_trl.vllm import ReloadVLLMGeneration

    assert isinstance(trainer.vllm_generation, ReloadVLLMGeneration)
    assert trainer.vllm_generation._reload_method == "gad_reload_weights"
    before = vllm_server.metrics()
    completions_before = vllm_server.count_requests("/v1/completions")
    reloads_before = vllm_server.count_requests("/collective_rpc")
    trainer.train()
    after = vllm_server.metrics()

    assert trainer.state.global_step == 3
    # Server-side evidence: every step's completions were generated (and every step's weights reloaded) there.
    assert vllm_server.count_requests("/v1/completions") - completions_before == 3
    claims = trainer.vllm_generation.claim_requests  # the run's claim on the server (gad_trl.vllm.server_claim)
    assert claims >= 2 and vllm_server.count_requests("/collective_rpc") - reloads_before == 3 + claims
    assert trainer.vllm_generation.num_weight_syncs == 3
    generated = after["vllm:generation_tokens_total"] - before.get("vllm:generation_tokens_total", 0.0)
    logged = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    assert len(logged) == 3
    # 4 completions a step; the server counted exactly the tokens the trainer received
    assert generated == pytest.approx(sum(4 * h["completions/mean_length"] for h in logged))
    # The server sampled from the trainer's current weights at every step: the sampling log-probs it returned match
    # the trainer's own recomputation. Measured on CPU: synced ~1e-3 (mean) / ~3e-3 (max); with the sync disabled
    # after step 1 (stale server) ~0.2-0.3 (mean) / ~0.6-1.0 (max) from step 2 on.
    for h in logged:
        assert h["sampling/sampling_logp_difference/mean"] < 0.02, h
        assert h["sampling/sampling_logp_difference/max"] < 0.05, h


def test_weight_sync_server_greedy_equals_trainer_greedy(vllm_server, tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, vllm_server, max_steps=2, learning_rate=5e-2)
    prompts = prompt_ids_of(trainer)
    sync = trainer.vllm_generation

    sync.sync_weights()  # the shared server may hold another test's weights: start from this student's
    initial_hf = hf_greedy(trainer.model, prompts)
    initial_server = vllm_server.greedy(prompts, MAX_TOKENS)
    assert_greedy_path_of(trainer.model, prompts, initial_server, initial_hf)

    trainer.train()
    assert trainer.state.global_step == 2
    # After train() the server holds the weights synced before the last optimizer step; one more sync (the call the
    # trainer makes at the start of each step) brings the final ones.
    sync.sync_weights()
    trained_hf = hf_greedy(trainer.model, prompts)
    trained_server = vllm_server.greedy(prompts, MAX_TOKENS)
    assert trained_hf != initial_hf, "learning rate too low: the student's greedy output did not change"
    assert trained_server != initial_server
    assert_greedy_path_of(trainer.model, prompts, trained_server, trained_hf)


class KillServerAt(TrainerCallback):
    def __init__(self, server, step):
        self.server, self.step, self.killed_at = server, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.killed_at is None:
            self.server.kill(sig=signal.SIGKILL, grace=10)  # a crash, not a clean shutdown
            self.killed_at = time.monotonic()


def test_server_dies_mid_run_clear_error_and_resume(vllm_server_factory, vllm_server, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from gad_trl.vllm import VLLMServerError

    doomed = vllm_server_factory(tiny_model_dir)
    out = tmp_path / "run"
    trainer = make_trainer(
        tiny_model_dir, out, doomed, max_steps=4, save_strategy="steps", save_steps=1, learning_rate=1e-3
    )
    killer = KillServerAt(doomed, step=2)
    trainer.add_callback(killer)
    with pytest.raises(VLLMServerError) as info:
        trainer.train()
    assert killer.killed_at is not None and not doomed.alive()
    assert time.monotonic() - killer.killed_at < 30, "the dead server was not detected promptly"
    message = str(info.value)
    assert doomed.url in message and "gad-trl vllm-serve --model" in message and "resume_from_checkpoint" in message
    assert trainer.state.global_step == 2

    # Generation (not only the weight sync) reports a dead server the same way.
    with pytest.raises(VLLMServerError, match=doomed.url):
        trainer.vllm_generation.generate(prompts=[[1, 2, 3]], images=None, num_generations=1)

    # Checkpoints: 1 and 2 are complete, nothing half-written for step 3.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-1", "checkpoint-2"]
    ckpt = out / "checkpoint-2"
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2
    assert load_file(str(ckpt / "model.safetensors"))  # loads, not truncated
    del trainer

    # Resume against a live server (the session one) from the last checkpoint.
    resumed = make_trainer(
        tiny_model_dir, out, vllm_server, max_steps=3, save_strategy="steps", save_steps=1, learning_rate=1e-3
    )
    completions_before = vllm_server.count_requests("/v1/completions")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    # The shared server held another test's weights: the resumed run pushed checkpoint-2's before generating.
    step3 = [h for h in resumed.state.log_history if h.get("step") == 3 and "loss" in h][0]
    assert step3["sampling/sampling_logp_difference/mean"] < 0.02, step3
    steps_logged = [h["step"] for h in resumed.state.log_history if "loss" in h]
    assert steps_logged == [1, 2, 3]  # 1-2 restored from checkpoint-2's state, 3 trained now
    assert vllm_server.count_requests("/v1/completions") - completions_before == 1  # only step 3 was generated
    assert (out / "checkpoint-3" / "trainer_state.json").exists()
    # The merged copy written for the server is scratch: gone once train() ends (the server holds the weights).
    assert not (out / "_vllm_weights").exists()
    assert resumed.vllm_generation.num_weight_syncs >= 1


def test_a_server_serving_another_model_is_refused(vllm_server, tiny_model_dir, tmp_path):
    """A student of another architecture than the served model is refused when the trainer connects, before any
    weight sync (not reported as a server that "stopped answering" after a failed reload), with both models named and
    the command that starts the right server; the server is left as it was."""
    from gad_trl.tiny import save_tiny_model
    from gad_trl.vllm import ServedModelError

    other = save_tiny_model(tmp_path / "other-student", seed=0, hidden_size=32)
    reloads_before = vllm_server.count_requests("/collective_rpc")
    with pytest.raises(ServedModelError) as info:
        make_trainer(other, tmp_path / "out", vllm_server)
    text = str(info.value)
    assert f"serves {vllm_server.model!r}" in text and repr(other) in text, text
    assert "hidden_size: 64 (server) vs 32 (student)" in text, text
    assert f"gad-trl vllm-serve --model {other}" in text, text
    assert vllm_server.count_requests("/collective_rpc") == reloads_before  # no reload was tried
    assert len(vllm_server.greedy([[1, 2, 3]], max_tokens=2)[0]) >= 1  # still serving


def test_weight_sync_merges_peft_adapters(vllm_server, tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    args = dict(max_steps=2, learning_rate=1e-1)
    trainer = GADTrainer(
        tiny_model_dir,
        args=make_args(tmp_path, vllm_server, **args),
        train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)),
        peft_config=lora,
    )
    assert isinstance(trainer.model, PeftModel)
    prompts = prompt_ids_of(trainer)
    trainer.vllm_generation.sync_weights()
    initial = vllm_server.greedy(prompts, MAX_TOKENS)
    assert_greedy_path_of(trainer.model, prompts, initial, hf_greedy(trainer.model, prompts))  # LoRA B = 0: the base

    trainer.train()
    trainer.vllm_generation.sync_weights()
    trained_hf = hf_greedy(trainer.model, prompts)  # adapters active, not merged
    assert trained_hf != initial, "learning rate too low: the adapters did not change the greedy output"
    trained_server = vllm_server.greedy(prompts, MAX_TOKENS)
    assert trained_server != initial
    assert_greedy_path_of(trainer.model, prompts, trained_server, trained_hf)
    # the sync merged a copy for the server and left the training model un-merged
    assert not any(getattr(m, "merged", False) for m in trainer.model.modules())
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "_vllm_weights" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in saved and not any("lora" in k for k in saved)


def test_server_that_cannot_start_skips_with_its_log(tmp_path, monkeypatch):
    """The fixtures' start-up path: a server that dies while starting becomes a skip whose reason carries the
    server's own error (or a failure with GAD_TRL_REQUIRE_VLLM=1)."""
    from tests.helpers import vllm_server as plugin

    plugin._require_vllm()
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    monkeypatch.delenv("GAD_TRL_REQUIRE_VLLM", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        plugin._start(str(bad), tmp_path / "bad.log")
    reason = str(info.value)
    assert "could not start a vLLM server" in reason and "exited with code" in reason
    assert "model_type" in reason  # vLLM's own complaint, from the server log tail
    monkeypatch.setenv("GAD_TRL_REQUIRE_VLLM", "1")
    monkeypatch.setattr(plugin.VLLMServer, "start", lambda self, timeout=0: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(pytest.fail.Exception, match="could not start a vLLM server"):
        plugin._start(str(bad), tmp_path / "bad2.log")
