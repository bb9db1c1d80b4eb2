"""Reliability issue #30: teacher trajectories that no rollout could produce, duplicate teacher answers, SODA's draw
on resume, the resume key over the whole data set, mixed answer types, a bad discriminator pad id, MoE students,
trainers built without `__init__` and TRL's error wording, colocated vLLM on CPU."""

from __future__ import annotations

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError, prepare_gad_dataset
from gad_trl.tiny import add, tiny_tool_rows
from tests.helpers.gad_helpers import make_args


def _call(name="add", call_id=None, a=1, b=2):
    call = {"type": "function", "function": {"name": name, "arguments": {"a": a, "b": b}}}
    return {**call, "id": call_id} if call_id else call


def _row(trajectory):
    return {"prompt": [{"role": "user", "content": "add 1 and 2"}], "teacher_response": trajectory}


# ---------------------------------------------------------------------------------------------------- 1. trajectories
def test_tool_call_without_result_is_refused_naming_the_row():
    rows = tiny_tool_rows(2)
    rows[1]["teacher_response"] = [
        {"role": "assistant", "content": "", "tool_calls": [_call()]},
        {"role": "assistant", "content": "1 plus 2 equals 3"},
    ]
    with pytest.raises(GADDataError, match=r"Row 1: .*'add' before it have no 'tool' result.*Add a"):
        prepare_gad_dataset(Dataset.from_list(rows))


def test_tool_result_without_call_is_refused():
    no_call = [{"role": "tool", "name": "add", "content": "3"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match=r"Row 0: .*message 0 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(no_call)]))
    extra = [{"role": "assistant", "content": "", "tool_calls": [_call()]},
             {"role": "tool", "name": "add", "content": "3"}, {"role": "tool", "name": "add", "content": "3"},
             {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="message 2 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(extra)]))
    wrong_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1")]},
                {"role": "tool", "name": "add", "content": "3", "tool_call_id": "c9"},
                {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="tool_call_id 'c9' matches no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(wrong_id)]))


def test_answered_calls_pass_by_id_and_by_order():
    by_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1"), _call(call_id="c2", a=2)]},
             {"role": "tool", "content": "4", "tool_call_id": "c2"}, {"role": "tool", "content": "3",
                                                                     "tool_call_id": "c1"},
             {"role": "assistant", "content": "3 and 4"}]
    ds = prepare_gad_dataset(Dataset.from_list([_row(by_id), *tiny_tool_rows(2)]))
    assert len(ds) == 3


def _tool_trainer(tmp_path, rows, **kwargs):
    from gad_trl import GADTrainer
    from gad_trl.tiny import build_tiny_model, build_tiny_tool_tokenizer

    tok = build_tiny_tool_tokenizer()
    return GADTrainer(build_tiny_model(tok), args=make_args(tmp_path, max_completion_length=16),
                      processing_class=tok, train_dataset=Dataset.from_list(rows), **kwargs)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


def test_call_to_a_tool_the_student_lacks_is_refused(tmp_path):
    rows = tiny_tool_rows(4)
    rows[2]["teacher_response"][0]["tool_calls"][0]["function"]["name"] = "multiply"
    with pytest.raises(GADDataError, match=r"Row 2 of the train set: .*calls the tool 'multiply', which the student "
                                           r"does not have \(its tools: add\)"):
        _tool_trainer(tmp_path, rows, tools=[add])
    _tool_trainer(tmp_path, rows, tools=[add, multiply])  # the student has it: accepted


# ------------------------------------------------------------------------------------------------- 8. MoE students
def _tiny_moe(kind: str):
    import torch
    from transformers import AutoModelForCausalLM, GptOssConfig, Qwen3MoeConfig

    common = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=16, num_experts_per_tok=2, pad_token_id=0)
    if kind == "gpt_oss":  # fused experts with biases (gate_up_proj_bias, down_proj_bias), a router with a bias
        config = GptOssConfig(intermediate_size=32, num_local_experts=4, layer_types=["full_attention"] * 2,
                              **common)
    else:
        config = Qwen3MoeConfig(intermediate_size=32, moe_intermediate_size=16, num_experts=4, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # nonzero biases: a dropped bias would show
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()
    return model


LORA_DISCRIMINATORS = {
    "full": {},
    "lora": dict(discriminator_use_peft=True, discriminator_lora_target_modules=["q_proj", "v_proj"]),
    # No PEFT default for these architectures: every linear layer, and the fused experts take no dropout.
    "lora_default_targets": dict(discriminator_use_peft=True, discriminator_lora_dropout=0.0),
}


@pytest.mark.parametrize("kind", ["gpt_oss", "qwen3_moe"])
@pytest.mark.parametrize("discriminator", list(LORA_DISCRIMINATORS))
def test_discriminator_initialises_from_a_lora_moe_student(tmp_path, kind, discriminator):
    import torch
    from peft import LoraConfig, get_peft_model

    from gad_trl import GADConfig
    from gad_trl.discriminator.model import backbone, load_discriminator, score_sequences

    student = _tiny_moe(kind)
    plain = {k: v.clone() for k, v in backbone(student).state_dict().items()}
    # LoRA on attention and on the fused expert parameters (PEFT's target_parameters: nested wrappers).
    student = get_peft_model(student, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                 target_parameters=["mlp.experts.gate_up_proj",
                                                                    "mlp.experts.down_proj"]))
    args = GADConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **LORA_DISCRIMINATORS[discriminator])
    disc = load_discriminator(student, args=args, pad_token_id=0)
    body = backbone(disc).state_dict()
    got = {".".join(p for p in k.split(".") if p != "base_layer"): v for k, v in body.items() if ".lora_" not in k}
    assert set(plain) <= set(got)
    assert all(torch.equal(plain[k], got[k]) for k in plain), "the discriminator's body differs from the student's"
    scores = score_sequences(disc, [[1, 2, 3], [4, 5]], 0, torch.device("cpu"))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("kind", ["gpt_oss", "qwen3_moe"])
@pytest.mark.parametrize("setup", ["lora_student_lora_discriminator", "shared_base"])
def test_gad_trains_a_lora_moe_student(tmp_path, kind, setup):
    """One GAD step end to end: a LoRA MoE student (fused experts adapted) with a LoRA discriminator from its weights,
    or with the discriminator as a second adapter on its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GptOssConfig, Qwen3MoeConfig

    from gad_trl import GADTrainer
    from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows

    tok = build_tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16, num_experts_per_tok=2, pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id)
    config = (GptOssConfig(intermediate_size=32, num_local_experts=4, layer_types=["full_attention"], **common)
              if kind == "gpt_oss" else Qwen3MoeConfig(intermediate_size=32, moe_intermediate_size=16, num_experts=4,
                                                       **common))
    model, peft_config = AutoModelForCausalLM.from_config(config), None
    if setup == "shared_base":
        peft_config = LoraConfig(r=2, target_modules="all-linear", lora_dropout=0.0)
        extra = dict(discriminator_shared_base=True, discriminator_lora_dropout=0.0)
    else:
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], target_parameters=[
            "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
        extra = dict(discriminator_use_peft=True, discriminator_lora_dropout=0.0)
    args = make_args(tmp_path, max_steps=1, per_device_train_batch_size=2, num_generations=2, use_cpu=True, **extra)
    trainer = GADTrainer(model, args=args, processing_class=tok, train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                         peft_config=peft_config)
    trainer.train()
    assert trainer.state.global_step == 1


def test_lora_dropout_on_fused_experts_names_the_field(tmp_path):
    from peft import LoraConfig, get_peft_model

    from gad_trl import GADConfig
    from gad_trl.discriminator.model import load_discriminator

    student = get_peft_model(_tiny_moe("qwen3_moe"), LoraConfig(r=2, target_modules="all-linear"))
    args = GADConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, discriminator_use_peft=True)
    with pytest.raises(ValueError, match="fused MoE expert parameters.*discriminator_lora_dropout: 0"):
        load_discriminator(student, args=args, pad_token_id=0)


# ------------------------------------------------------------------- 9. a trainer built without __init__ (TRL's tests)
def _bare_trainer(cls):
    """TRL's `TestGRPORolloutDispatch._make_trainer`, plus what `_generate` reads after the rollout."""
    from collections import defaultdict
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    import torch

    trainer = object.__new__(cls)
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, gather=lambda t: t)
    trainer.args = SimpleNamespace(report_to=[])
    trainer.model = SimpleNamespace(training=True)
    trainer.state = SimpleNamespace(global_step=2, num_input_tokens_seen=0)
    trainer._last_loaded_step = 1
    trainer.use_vllm = False
    trainer.use_transformers_paged = False
    trainer.vllm_generation = SimpleNamespace(sync_weights=MagicMock())
    trainer.tools = None
    trainer.processing_class = MagicMock(batch_decode=lambda ids, **kw: ["x" for _ in ids])
    trainer._tokenizer = SimpleNamespace(pad_token_id=0)
    trainer.eos_token_ids = [3]
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    return trainer


@pytest.fixture(params=["GRPOTrainer", "GADTrainer"])
def bare_trainer(request):
    import trl

    import gad_trl

    return _bare_trainer(getattr(gad_trl if request.param == "GADTrainer" else trl, request.param))


def test_generate_prefers_rollout_func(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.rollout_func = MagicMock(return_value={
        "prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": [[-0.1]], "env_mask": [[1]]})
    prompt_ids, completion_ids, tool_mask, _, logprobs, extra_fields, _, _ = bare_trainer._generate(["prompt"])
    assert (prompt_ids, completion_ids, tool_mask, logprobs, extra_fields) == ([[1]], [[2]], [[1]], [[-0.1]], {})
    bare_trainer.rollout_func.assert_called_once_with(["prompt"], bare_trainer)


def test_generate_rollout_func_syncs_vllm_weights_when_needed(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.use_vllm = True
    bare_trainer.rollout_func = MagicMock(return_value={"prompt_ids": [[1]], "completion_ids": [[2]],
                                                        "logprobs": [[0.0]]})
    bare_trainer._generate(["prompt"])
    bare_trainer.vllm_generation.sync_weights.assert_called_once()
    assert bare_trainer._last_loaded_step == bare_trainer.state.global_step


def test_generate_rollout_func_raises_when_required_keys_are_missing(bare_trainer):
    from unittest.mock import MagicMock

    bare_trainer.rollout_func = MagicMock(return_value={"prompt_ids": [[1]], "completion_ids": [[2]]})
    with pytest.raises(ValueError, match="rollout_func must return keys"):
        bare_trainer._generate(["prompt"])


# ------------------------------------------------------------------ 10. errors that pre-empt TRL's carry its wording
TRL_MODEL = "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"  # never loaded: every check below fails first


def _reward(completions, **kwargs):
    return [0.0] * len(completions)


def test_dataset_required_without_environment(tmp_path):
    from gad_trl import GADTrainer

    with pytest.raises(ValueError, match="`train_dataset` is required.*teacher's responses"):
        GADTrainer(model=TRL_MODEL, reward_funcs=_reward, args=make_args(tmp_path))


def test_mismatched_reward_processing_classes_length(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows

    with pytest.raises(ValueError, match="must match") as info:
        GADTrainer(model=TRL_MODEL, reward_funcs=[_reward, _reward], reward_processing_classes=build_tiny_tokenizer(),
                   args=make_args(tmp_path), train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    assert "The number of reward processing classes (1) must match the number of reward functions (2)" in str(
        info.value)


def test_mismatched_reward_weights_carry_trl_wording(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows

    with pytest.raises(ValueError, match=r"Number of reward weights \(1\) must match number of reward functions \(2\)"):
        GADTrainer(model=TRL_MODEL, reward_funcs=_reward, args=make_args(tmp_path, reward_weights=[1.0]),
                   train_dataset=Dataset.from_list(tiny_gad_rows(4)))


def test_unsupported_dataset_dict_is_a_type_error_in_trl_wording(tmp_path):
    from datasets import DatasetDict

    from gad_trl.tiny import tiny_gad_rows

    splits = DatasetDict({"train": Dataset.from_list(tiny_gad_rows(4))})
    trl_wording = r"`train_dataset` must be a `Dataset` or `IterableDataset`"
    with pytest.raises(TypeError, match=trl_wording + r".*dataset\['train'\]"):
        prepare_gad_dataset(splits)
    with pytest.raises(GADDataError, match="`eval_dataset` must be a `Dataset` or `IterableDataset`, got `list`"):
        prepare_gad_dataset(tiny_gad_rows(4), split_name="eval")


# ------------------------------------------------------------------------------- 11. colocated vLLM on CPU
def test_colocate_on_cpu_with_trl_sync_is_refused_before_vllm_starts(tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.tiny import tiny_gad_rows

    args = make_args(tmp_path, use_cpu=True, use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ValueError, match=r"""colocate' on CPU needs vllm_weight_sync="reload".*'weight_loader'"""):
        GADTrainer(model=TRL_MODEL, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)))


def test_colocated_reload_goes_through_vllms_layerwise_reload(monkeypatch):
    """The colocated `reload` sync hands the student's (name, tensor) pairs to the worker's `reload_weights` (vLLM's
    layer-wise reload, which restores the loaders the CPU backend removed), re-ties tied layers, resets the cache."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    import torch

    from gad_trl.vllm.generation import ReloadVLLMGeneration

    embed = torch.nn.Parameter(torch.zeros(2, 2))
    model = torch.nn.Module()
    model.embed, model.head = torch.nn.Module(), torch.nn.Module()
    model.embed.weight = embed
    model.head.weight = embed  # tied
    received = {}

    def reload_weights(weights_iterator=None, is_checkpoint_format=True):
        received.update(dict(weights_iterator))
        model.head.weight = torch.nn.Parameter(torch.ones(2, 2))  # the reload broke the tie

    worker = SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model), reload_weights=reload_weights,
                             vllm_config=None)
    backend = ReloadVLLMGeneration.__new__(ReloadVLLMGeneration)
    backend.mode, backend.enable_sleep_mode, backend.num_weight_syncs = "colocate", False, 0
    backend.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker)),
                                  reset_prefix_cache=MagicMock())
    backend._iter_named_params = lambda: iter([("model.embed_tokens.weight", torch.full((2, 2), 3.0))])
    backend.sync_weights()
    assert set(received) == {"model.embed_tokens.weight"}
    assert model.head.weight is model.embed.weight  # re-tied to the input embedding
    backend.llm.reset_prefix_cache.assert_called_once()
    assert backend.num_weight_syncs == 1


# ------------------------------------------------------------------------------ 2. duplicate teacher answers
def test_duplicate_answers_keep_weight_one_over_k_as_in_seqkd_and_heldout(tiny_model_dir, tmp_path):
    """A row with answers [a, a, b]: the trainer scores `a` once but pairs every completion with a, a and b at 1/3
    each (a weighs 2/3), as seqkd trains on three examples and the held-out set weighs each answer 1/3."""
    import math

    import torch

    from gad_trl.baselines.seqkd import to_seqkd_dataset
    from gad_trl.tiny import tiny_gad_rows
    from tests.helpers.gad_helpers import make_trainer

    rows = tiny_gad_rows(2, seed=3)
    a, b = rows[0]["teacher_response"], rows[1]["teacher_response"]
    row = {"prompt": rows[0]["prompt"], "teacher_response": [a, a, b]}
    trainer = make_trainer(tiny_model_dir, tmp_path, rows=[row, dict(row)], max_steps=1, num_generations=2,
                           per_device_train_batch_size=2)
    inputs = [{"prompt": row["prompt"], "teacher_response": [a, a, b]}] * 2
    batch = trainer.discriminator_component.encoder.encode(inputs, [[1, 2], [1, 2]], [[5], [6]])
    assert len(batch.teacher_seqs) == 2  # a and b, each scored once
    pairs = batch.pairs
    assert pairs.teacher.tolist() == [0, 0, 1, 0, 0, 1] and pairs.student.tolist() == [0, 0, 0, 1, 1, 1]
    weight_of_a = sum(w for t, s, w in zip(pairs.teacher.tolist(), pairs.student.tolist(), pairs.weight.tolist())
                      if s == 0 and t == 0)
    assert math.isclose(weight_of_a, 2 / 3, rel_tol=1e-6)

    assert len(to_seqkd_dataset(Dataset.from_list([row]))) == 3  # seqkd: one example per answer, duplicates kept
    triple = {"prompt": row["prompt"], "teacher_response": [a, a, b], "student_response": "A B",
              "student_finished": True}
    heldout = trainer.discriminator_component.evaluate_triples([triple])
    t_a, _, t_b = heldout["teacher_scores"]
    s = heldout["student_scores"][0]
    assert math.isclose(heldout["score_diff"], (2 * (t_a - s) + (t_b - s)) / 3, rel_tol=1e-5, abs_tol=1e-6)


# ------------------------------------------------------------------------------------ 3. SODA's draw on resume
def test_resumed_soda_draws_the_samples_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """A run killed after its first batch (its cache holds that batch) and resumed draws, for the other rows, the
    samples an uninterrupted run draws: each sample has its own seed, not a place in one random stream."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.tiny import tiny_gad_rows
    from gad_trl.baselines.soda import build_soda_dataset

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = tiny_gad_rows(4, seed=0)
    settings = dict(max_new_tokens=8, seed=0, batch_size=2, temperature=1.0)
    whole = build_soda_dataset(rows, model, tokenizer, cache_path=tmp_path / "whole.jsonl", **settings)
    cache = tmp_path / "killed.jsonl"
    build_soda_dataset(rows[:2], model, tokenizer, cache_path=cache, **settings)  # the batch done before the kill
    resumed = build_soda_dataset(rows, model, tokenizer, cache_path=cache, **settings)
    assert resumed["rejected"] == whole["rejected"]
    assert len({m[0]["content"] for m in whole["rejected"]}) > 1  # really sampled, not one fixed answer


# ------------------------------------------------------------------------- 4. the resume key covers every row
def test_resume_key_sees_a_change_at_row_1500(tmp_path):
    import json

    from gad_trl.run_folder import RUN_KEY_NAME, check_run_key, run_key
    from gad_trl.tiny import tiny_gad_rows

    rows = tiny_gad_rows(8) * 250  # 2000 rows
    key = run_key("student", Dataset.from_list(rows), 10)
    (tmp_path / RUN_KEY_NAME).write_text(json.dumps(key))
    check_run_key(str(tmp_path), run_key("student", Dataset.from_list(rows), 10))  # same data: accepted
    changed = [dict(r) for r in rows]
    changed[1500]["teacher_response"] += " (edited)"
    with pytest.raises(ValueError, match="written by another run .*train_data_digest"):
        check_run_key(str(tmp_path), run_key("student", Dataset.from_list(changed), 10))
    # A checkpoint written before this key (digest of the first 1000 rows under `train_digest`) is compared on the rest.
    (tmp_path / RUN_KEY_NAME).write_text(json.dumps({"model": "student", "train_rows": 2000, "train_digest": "old",
                                                     "max_steps": 10}))
    check_run_key(str(tmp_path), run_key("student", Dataset.from_list(changed), 10))


# ------------------------------------------------------------- 5. answer lists in train, strings in test
@pytest.mark.parametrize("layout", ["folder", "split_placeholder"])
def test_list_answers_in_train_and_strings_in_test_load_and_normalise(tmp_path, layout):
    from gad_trl.data import load_any_dataset
    from gad_trl.tiny import tiny_gad_rows, write_jsonl

    rows = tiny_gad_rows(4)
    write_jsonl([dict(r, teacher_response=[r["teacher_response"], "another answer"]) for r in rows],
                tmp_path / "train.jsonl")
    write_jsonl(rows, tmp_path / "test.jsonl")
    splits = load_any_dataset(str(tmp_path) if layout == "folder" else str(tmp_path / "{split}.jsonl"))
    train, test = prepare_gad_dataset(splits["train"]), prepare_gad_dataset(splits["test"], split_name="eval")
    assert train[0]["teacher_response"] == [rows[0]["teacher_response"], "another answer"]
    assert test[0]["teacher_response"] == rows[0]["teacher_response"]


def test_a_cast_error_between_splits_is_explained():
    from datasets.exceptions import DatasetGenerationError

    from gad_trl.data import _explained_split_types

    with pytest.raises(GADDataError, match="different types in different splits.*one-element list"):
        with _explained_split_types("org/data"):
            try:
                raise TypeError("Couldn't cast array of type\nstring\nto\nList(Value('string'))")
            except TypeError as err:
                raise DatasetGenerationError("An error occurred while generating the dataset") from err


# ------------------------------------------------------------------ 6. a discriminator config with a bad pad id
def test_out_of_range_pad_token_id_names_the_field_and_the_fix(tmp_path):
    import json

    from transformers import AutoConfig

    from gad_trl.discriminator.value_head import load_value_model, value_model_from_config
    from gad_trl.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "disc", seed=0)
    config = json.loads((tmp_path / "disc" / "config.json").read_text())
    vocab = config["vocab_size"]
    config["pad_token_id"] = vocab + 7
    (tmp_path / "disc" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json: pad_token_id={vocab + 7} is outside the vocabulary "
                                         rf"\(vocab_size={vocab}\).*Set pad_token_id to a token id below {vocab}"):
        load_value_model(path, num_labels=1)
    with pytest.raises(ValueError, match="pad_token_id=.* is outside the vocabulary"):
        value_model_from_config(AutoConfig.from_pretrained(path, num_labels=1))
