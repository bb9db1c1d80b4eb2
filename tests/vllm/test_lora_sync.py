"""Adapter-only weight sync (`vllm_weight_sync="lora"`, `gad_trl.vllm.lora_sync` + `LoRAVLLMGeneration`): the pieces
without a server, then a real vLLM CPU server with LoRA enabled (one per module) serving a tiny LoRA student."""

import json
import os
import textwrap

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gad_trl import GADConfig, GADTrainer
from gad_trl.tiny import tiny_gad_rows
from gad_trl.vllm.lora_sync import (ADAPTER_PREFIX, ADAPTER_WEIGHTS, adapter_state, save_adapter,
                                    server_lora_problem, student_adapter)
from tests.vllm.test_worker_extension import MAX_TOKENS, make_args, prompt_ids_of

RANK = 8


def lora(**overrides):
    # init_lora_weights=False: B != 0, so the adapter changes the output from the first sync (a zero adapter proves
    # nothing about which weights the server uses).
    return LoraConfig(**{"r": RANK, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                         "init_lora_weights": False, "task_type": "CAUSAL_LM", **overrides})


class _NoGather:
    from contextlib import nullcontext

    def gather_params(self, params):
        return self.nullcontext()


# --------------------------------------------------------------------------------------------------------- no server
def test_student_adapter_names_what_vllm_cannot_serve(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="not a PEFT model.*use_peft=True"):
        student_adapter(base)
    name, config = student_adapter(get_peft_model(base, lora()))
    assert name == "default" and config.r == RANK
    for extra, words in (({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"use_dora": True}, "use_dora"),
                         ({"bias": "all"}, "bias='all'"), ({"rank_pattern": {"q_proj": 16}}, "rank_pattern"),
                         ({"alpha_pattern": {"q_proj": 4}}, "alpha_pattern")):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora(**extra))
        with pytest.raises(ValueError, match=f"{words}.*vllm_weight_sync='reload'"):
            student_adapter(model)


def test_the_saved_adapter_is_peft_s_own_and_holds_only_the_student_adapter(tiny_model_dir, tmp_path):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora())
    model.add_adapter("discriminator", lora(r=4))  # shared-base mode: a second adapter on the same base
    model.set_adapter("default")
    state = adapter_state(model, "default", _NoGather())
    assert state and not any("discriminator" in k or ".default." in k for k in state)
    expected = sum(p.numel() for n, p in model.named_parameters() if ".default." in n)
    assert sum(t.numel() for t in state.values()) == expected
    folder = str(tmp_path / "sync" / f"{ADAPTER_PREFIX}1")
    os.makedirs(os.path.dirname(folder))
    sent = save_adapter(state, model.peft_config["default"], folder)
    assert sorted(os.listdir(folder)) == ["adapter_config.json", ADAPTER_WEIGHTS]
    assert not os.path.exists(folder + ".partial")
    assert sent == sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert json.load(open(os.path.join(folder, "adapter_config.json")))["r"] == RANK
    # PEFT loads it back onto the base and gives the same outputs as the student
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    ids = torch.tensor([[3, 4, 5, 6]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert load_file(os.path.join(folder, ADAPTER_WEIGHTS)).keys() == state.keys()


def test_a_4bit_student_sends_an_adapter_for_the_unquantised_base(tiny_model_dir, tmp_path):
    """QLoRA: the adapter of a student on an nf4 base is a plain PEFT adapter that loads onto the base checkpoint
    (what the server serves, in bf16/fp32 or quantised itself); the 4-bit weights never leave the trainer."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import BitsAndBytesConfig

    quantized = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32))
    student = get_peft_model(quantized, lora())
    state = adapter_state(student, "default", _NoGather())
    assert all(".lora_" in k for k in state) and all(t.dtype == torch.float32 for t in state.values())
    folder = str(tmp_path / f"{ADAPTER_PREFIX}1")
    save_adapter(state, student.peft_config["default"], folder)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    for name, value in get_peft_state(reloaded).items():
        torch.testing.assert_close(value, state[name])


def get_peft_state(model):
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def test_server_lora_problem_reads_the_server_configuration():
    def info(lora_config, env="1"):
        return {"vllm_config": {"lora_config": lora_config}, "vllm_env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": env}}

    assert "--enable-lora" in server_lora_problem(info(None), 8)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in server_lora_problem(info({"max_lora_rank": 8}, env=False), 8)
    assert "up to rank 8" in server_lora_problem(info({"max_lora_rank": 8}), 16)
    assert server_lora_problem(info({"max_lora_rank": 16}), 16) is None


def test_lora_sync_is_refused_with_sleep_mode_and_for_a_full_weight_student(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot use vllm_enable_sleep_mode"):
        GADConfig(output_dir=str(tmp_path), use_cpu=True, use_vllm=True, vllm_mode="colocate",
                  vllm_weight_sync="lora", vllm_enable_sleep_mode=True, report_to="none")
    args = GADConfig(output_dir=str(tmp_path), use_cpu=True, use_vllm=True, vllm_mode="server",
                     vllm_weight_sync="lora", vllm_server_base_url="http://127.0.0.1:9", report_to="none",
                     per_device_train_batch_size=4, num_generations=4)
    with pytest.raises(ValueError, match="not a PEFT model"):  # before any connection attempt
        GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4, seed=0)))


# --------------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def lora_server(tiny_model_dir, tmp_path_factory):
    """`gad-trl vllm-serve --weight-sync lora --max-lora-rank 8` serving the tiny base (CPU float32 defaults)."""
    from gad_trl.vllm.launcher import CPU_SERVER_ARGS
    from gad_trl.vllm.serve import _cuda_available
    from tests.helpers.vllm_server import _require_vllm, _start

    _require_vllm()
    base = () if _cuda_available() else CPU_SERVER_ARGS
    server = _start(tiny_model_dir, tmp_path_factory.mktemp("vllm-lora") / "server.log", weight_sync="lora",
                    extra_args=(*base, "--max-lora-rank", str(RANK)))
    yield server
    server.kill()


def lora_trainer(tiny_model_dir, output_dir, server, rows=8, peft_config=None, **overrides):
    args = make_args(output_dir, server, vllm_weight_sync="lora", **overrides)
    return GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(rows, seed=0)),
                      peft_config=peft_config or lora())


def merged_copy(trainer):
    import copy

    return copy.deepcopy(trainer.model).merge_and_unload()


def strengthen_adapter(model, scale=3.0, seed=0):
    """Random lora_B of the student's adapter, large enough that its outputs differ clearly from the base's (the tiny
    random model is near-uniform: a small adapter barely moves it)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default." in name and "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def sampled_logprobs(server, prompts, model):
    """Completions the server samples with adapter `model` (temperature 1) and the log-probs it reports for them."""
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=server.url, connection_timeout=10)
    client.model = model
    out = client.generate(prompts=prompts, n=1, temperature=1.0, max_tokens=MAX_TOKENS, logprobs=0,
                          generation_kwargs={"seed": 0})
    return out["completion_ids"], [[position[0] for position in seq] for seq in out["logprobs"]]


def logprobs_under(model, prompts, completions):
    model.eval()
    out = []
    with torch.no_grad():
        for ids, completion in zip(prompts, completions, strict=True):
            logits = model(torch.tensor([ids + completion])).logits[0, len(ids) - 1 : -1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
            out.append(logps.tolist())
    return out


def assert_serves(server, adapter, trainer, prompts, base):
    """The server's samples under `adapter` carry the merged student's log-probs (vLLM's CPU kernels differ from
    transformers' by ~1e-3), which differ clearly from the base model's on the same tokens."""
    completions, served = sampled_logprobs(server, prompts, adapter)
    student = logprobs_under(merged_copy(trainer), prompts, completions)
    plain = logprobs_under(base, prompts, completions)
    flat = lambda xs: torch.tensor([x for seq in xs for x in seq])  # noqa: E731
    assert (flat(served) - flat(student)).abs().max() < 1e-2, (served, student)
    assert (flat(plain) - flat(student)).abs().max() > 0.1  # the check above can tell the two apart
    return completions, flat(served)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_each_sync_serves_the_student_adapter_on_the_unchanged_base(lora_server, tiny_model_dir, tmp_path):
    trainer = lora_trainer(tiny_model_dir, tmp_path / "out", lora_server, max_steps=2,
                           discriminator_shared_base=True, discriminator_lora_r=4)
    strengthen_adapter(trainer.model)
    loads = lora_server.count_requests("/v1/load_lora_adapter")
    reloads = lora_server.count_requests("/collective_rpc")
    resets = lora_server.count_requests("/reset_prefix_cache")
    trainer.train()
    generation = trainer.vllm_generation
    assert generation.num_weight_syncs == 2
    assert lora_server.count_requests("/v1/load_lora_adapter") - loads == 2
    # only the claim's RPCs (acquire, release): no full-weight reload ever
    assert lora_server.count_requests("/collective_rpc") - reloads == 2
    served = f"{ADAPTER_PREFIX}2"
    assert generation.vllm_client.model == served
    # a resumed run reuses adapter names: cached prompt blocks of an earlier run's weights are dropped at each load
    assert lora_server.count_requests("/reset_prefix_cache") - resets == 2
    folders = sorted(os.listdir(generation.weight_sync_dir))
    assert folders == [f"{ADAPTER_PREFIX}1", served]  # the one before kept one more sync, older ones removed
    saved = load_file(os.path.join(generation.weight_sync_dir, served, ADAPTER_WEIGHTS))
    student_params = sum(p.numel() for n, p in trainer.model.named_parameters() if ".default." in n)
    assert sum(t.numel() for t in saved.values()) == student_params  # the discriminator's adapter never left
    sent = [h["vllm/weight_sync_bytes"] for h in trainer.state.log_history if "vllm/weight_sync_bytes" in h]
    full_weights = os.path.getsize(os.path.join(tiny_model_dir, "model.safetensors"))
    assert sent and sent[-1] == generation.last_sync_bytes < full_weights / 4
    listed = [m["id"] for m in __import__("requests").get(f"{lora_server.url}/v1/models", timeout=10).json()["data"]]
    assert [m for m in listed if m.startswith(ADAPTER_PREFIX)] == [served]

    # The server samples from the student's adapter on the base, not from the base. (The last sync came before the
    # last optimizer step: sync the final weights first.)
    generation.sync_weights()
    assert generation.vllm_client.model == f"{ADAPTER_PREFIX}3"
    prompts = prompt_ids_of(trainer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    first = assert_serves(lora_server, f"{ADAPTER_PREFIX}3", trainer, prompts, base)

    # A changed adapter, synced again: the next version serves the new weights.
    strengthen_adapter(trainer.model, seed=1)
    generation.sync_weights()
    assert generation.vllm_client.model == f"{ADAPTER_PREFIX}4"
    second = assert_serves(lora_server, f"{ADAPTER_PREFIX}4", trainer, prompts, base)
    assert second[0] != first[0] or (second[1] - first[1]).abs().max() > 0.1  # what the server samples changed


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_resume_and_async_generation_with_adapter_sync(lora_server, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    first = lora_trainer(tiny_model_dir, out, lora_server, max_steps=2, save_strategy="steps", save_steps=2)
    strengthen_adapter(first.model)
    first.train()
    # Resumed, with one-step-off generation: the first sync after resume sends the restored adapter.
    resumed = lora_trainer(tiny_model_dir, out, lora_server, max_steps=4, async_generation=True,
                           vllm_importance_sampling_mode="token_truncate")
    loads = lora_server.count_requests("/v1/load_lora_adapter")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    generation = resumed.vllm_generation
    assert generation.num_weight_syncs >= 2
    assert lora_server.count_requests("/v1/load_lora_adapter") - loads == generation.num_weight_syncs
    assert any(h.get("async_generation/prefetched") == 1.0 for h in resumed.state.log_history)  # overlapped
    generation.sync_weights()  # the final weights (the last sync came before the last optimizer step)
    assert_serves(lora_server, generation.vllm_client.model, resumed, prompt_ids_of(resumed),
                  AutoModelForCausalLM.from_pretrained(tiny_model_dir))


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_servers_that_cannot_take_the_adapter_are_clear_errors(lora_server, vllm_server, tiny_model_dir, tmp_path,
                                                               monkeypatch):
    from gad_trl.vllm import VLLMServerError

    # a server without LoRA (the shared reload server)
    with pytest.raises(VLLMServerError,
                       match=r"(?s)without LoRA serving \(--enable-lora\).*--weight-sync lora --max-lora-rank 8"):
        lora_trainer(tiny_model_dir, tmp_path / "a", vllm_server)
    # an adapter of a higher rank than the server holds
    with pytest.raises(VLLMServerError, match=r"(?s)up to rank 8.*rank 16.*--max-lora-rank 16"):
        lora_trainer(tiny_model_dir, tmp_path / "b", lora_server, peft_config=lora(r=16))
    # another base than the student's, same architecture: refused (only the adapter is ever sent)
    from gad_trl.tiny import save_tiny_model
    from gad_trl.vllm import ServedModelError

    other = save_tiny_model(tmp_path / "other-base", seed=1)
    with pytest.raises(ServedModelError, match=r"(?s)served base is never\s+replaced"):
        lora_trainer(other, tmp_path / "d", lora_server)
    # the server cannot read the adapter (e.g. another machine without the shared folder): its error, and the fix
    trainer = lora_trainer(tiny_model_dir, tmp_path / "c", lora_server, max_steps=1)
    generation = trainer.vllm_generation
    monkeypatch.setattr(type(generation), "_save_weights", lambda self: os.path.join(self.weight_sync_dir, "missing"))
    with pytest.raises(VLLMServerError, match=r"(?s)could not load the student's LoRA adapter from .*missing \(404.*"
                                              r"readable by the server"):
        generation.sync_weights()
    # an adapter the server rejects (HTTP 500): vLLM's own reason reaches the error, not "stopped answering"
    bad = os.path.join(generation.weight_sync_dir, "too-big")

    def save_a_rank_64_adapter(self):
        big = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora(r=64))
        big.save_pretrained(bad)
        return bad

    monkeypatch.setattr(type(generation), "_save_weights", save_a_rank_64_adapter)
    with pytest.raises(VLLMServerError, match=r"(?s)could not load the student's LoRA adapter .*\(500: .*64"):
        generation.sync_weights()


COLOCATE_SCRIPT = textwrap.dedent('''
    import copy, sys
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams
    from gad_trl import GADConfig, GADTrainer
    from gad_trl.tiny import tiny_gad_rows
    from tests.vllm.test_lora_sync import lora, logprobs_under, strengthen_adapter

    model_dir, output_dir = sys.argv[1], sys.argv[2]
    args = GADConfig(output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=2,
                     num_generations=2, max_completion_length=8, max_steps=2, save_strategy="no", beta=0.0,
                     learning_rate=1e-2, use_vllm=True, vllm_mode="colocate", vllm_weight_sync="lora",
                     vllm_max_model_length=256, disable_tqdm=True, warn_on_unhealthy_metrics=False)
    trainer = GADTrainer(model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8)), peft_config=lora())
    strengthen_adapter(trainer.model)
    trainer.train()
    generation = trainer.vllm_generation
    generation.sync_weights()  # the weights of the last step (a step's sync runs before its generation)
    tok = trainer.processing_class
    prompts = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
               for r in tiny_gad_rows(3, seed=1)]
    outs = generation.llm.generate([{"prompt_token_ids": p} for p in prompts], use_tqdm=False,
                                   sampling_params=SamplingParams(temperature=1.0, max_tokens=8, logprobs=0, seed=0))
    completions = [list(o.outputs[0].token_ids) for o in outs]
    served = torch.tensor([lp[t].logprob for o in outs for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)])
    merged = copy.deepcopy(trainer.model).merge_and_unload()
    student = torch.tensor([x for seq in logprobs_under(merged, prompts, completions) for x in seq])
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    plain = torch.tensor([x for seq in logprobs_under(base, prompts, completions) for x in seq])
    print("SYNCS", generation.num_weight_syncs)
    print("STUDENT_DIFF", (served - student).abs().max().item())
    print("BASE_DIFF", (plain - student).abs().max().item())
    print("FOLDERS", ",".join(sorted(__import__("os").listdir(generation.weight_sync_dir))))
''')


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_colocated_engine_serves_the_synced_adapter(tiny_model_dir, tmp_path):
    """vllm_mode='colocate': the in-process engine (LoRA enabled) generates with the adapter of the last sync. Run in
    a child process: vLLM initialises torch.distributed and its engine in the process that builds it."""
    from trl.import_utils import is_vllm_available

    from tests.vllm.test_generation_colocate import run_colocated

    if not is_vllm_available():
        pytest.skip("vLLM is not installed (scripts/install_env.sh)")
    values = run_colocated(COLOCATE_SCRIPT, tiny_model_dir, tmp_path / "out",
                           ("SYNCS", "STUDENT_DIFF", "BASE_DIFF", "FOLDERS"))
    assert int(values["SYNCS"]) == 3
    # The engine's log-probs are the merged student's (to the engine's CPU dtype rounding), not the base's.
    assert float(values["STUDENT_DIFF"]) < 0.02 < 0.1 < float(values["BASE_DIFF"]), values
    assert values["FOLDERS"] == f"{ADAPTER_PREFIX}2,{ADAPTER_PREFIX}3"  # the last two versions


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_zero3_launch_syncs_the_gathered_adapter(lora_server, tmp_path):
    """`accelerate launch` with ZeRO-3 (2 CPU processes, DeepSpeed on CPU) through `gad-trl gad`: every process gathers
    the adapter's shards, the main process alone talks to the server, and the server loads a whole adapter."""
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    from tests.cli.test_launch import launch, write_tiny_data

    base = lora_server.model  # the student is the served base itself (lora mode refuses any other)
    loads = lora_server.count_requests("/v1/load_lora_adapter")
    launch("zero3", base, write_tiny_data(tmp_path), tmp_path, "--lora-vllm", lora_server.url)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" and r["global_step"] == 3 for r in ranks)
    assert ranks[0]["syncs"] == 3 and ranks[0]["served"] == f"{ADAPTER_PREFIX}3"
    assert lora_server.count_requests("/v1/load_lora_adapter") - loads == 3  # one load a sync, not one per process
    saved = load_file(os.path.join(ranks[0]["weight_sync_dir"], f"{ADAPTER_PREFIX}3", ADAPTER_WEIGHTS))
    whole = get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora(init_lora_weights=True))
    expected = {k: v.shape for k, v in get_peft_state(whole).items()}
    assert {k: v.shape for k, v in saved.items()} == expected  # the gathered adapter, not a ZeRO-3 shard
