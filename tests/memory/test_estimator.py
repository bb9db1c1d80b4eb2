"""`gad_trl.memory.estimator`: exact parameter counts, per-mode relations, bad input. The CLI: test_cli_estimate_memory.py.

The estimate's agreement with measured peaks is a benchmark (`python -m benchmarks.memory`), not a test."""

from __future__ import annotations

import pytest
import torch

from gad_trl.memory.estimator import (
    MemoryEstimateError,
    RunSettings,
    count_model,
    estimate,
    estimate_modes,
    nf4_bytes_per_param,
)
from gad_trl.tiny import save_tiny_model


@pytest.fixture(scope="module")
def qwen7b():
    # Offline: the built-in table of public configs (no Hub here).
    return count_model("Qwen/Qwen2.5-7B-Instruct")


@pytest.mark.parametrize("tied", [True, False])
def test_counts_equal_real_tiny_models(tmp_path, tied):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = save_tiny_model(tmp_path / "m", hidden_size=64, num_layers=2)
    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = tied
    shape = count_model(path, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "k_proj", "gate_proj"], config=config)

    causal = AutoModelForCausalLM.from_config(config)
    assert shape.causal_lm_params == sum(p.numel() for p in causal.parameters())
    assert shape.lm_head_params == (0 if tied else causal.lm_head.weight.numel())
    seqcls_config = AutoConfig.from_pretrained(path, num_labels=1)
    seqcls_config.tie_word_embeddings = tied
    disc = AutoModelForSequenceClassification.from_config(seqcls_config)
    assert shape.discriminator_params == sum(p.numel() for p in disc.parameters())
    assert shape.value_head_params == disc.score.weight.numel()
    linears = sum(
        m.weight.numel() for n, m in causal.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
    )
    assert shape.causal_lm_quantized_params == linears
    peft = get_peft_model(causal, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "gate_proj"]))
    assert shape.lora_params == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert shape.lora_target_modules == ["gate_proj", "k_proj", "q_proj"]


def test_public_config_counts(qwen7b):
    # Qwen2.5-7B is published as 7.61B parameters (6.53B without embeddings).
    assert qwen7b.causal_lm_params == 7_615_616_512
    assert qwen7b.config_source.startswith("built-in table")


def _settings(**kw):
    base = dict(
        per_device_train_batch_size=4, prompt_length=2048, max_completion_length=1536, gradient_checkpointing=True,
        discriminator_mini_batch_size=8, beta=0.001, student_dtype="float32", discriminator_dtype="float32",
        use_vllm=True,
    )
    return RunSettings(**{**base, **kw})


def test_sharded_is_one_nth_of_float32_replicated(qwen7b):
    replicated = estimate(qwen7b, qwen7b, _settings(num_gpus=1), "replicated")
    sharded = estimate(qwen7b, qwen7b, _settings(num_gpus=8), "sharded")
    for name in ("student", "discriminator"):
        full, shard = getattr(replicated, name), getattr(sharded, name)
        for field in ("weights", "gradients", "optimizer"):
            assert getattr(shard, field) == pytest.approx(getattr(full, field) / 8, rel=1e-6), (name, field)
    assert sharded.reference.weights == pytest.approx(replicated.reference.weights / 8, rel=1e-6)
    assert sharded.peak < replicated.peak / 2


def test_lora_and_qlora_relations(qwen7b):
    s = _settings(student_dtype="bfloat16", discriminator_dtype="bfloat16")
    full = estimate(qwen7b, qwen7b, s, "replicated")
    lora = estimate(qwen7b, qwen7b, s, "lora")
    qlora = estimate(qwen7b, qwen7b, s, "qlora")
    shared = estimate(qwen7b, qwen7b, s, "shared_base")
    # LoRA: the trained state is a tiny fraction of full fine-tuning; the reference costs nothing.
    for model in ("student", "discriminator"):
        assert getattr(lora, model).gradients + getattr(lora, model).optimizer < 0.01 * (
            getattr(full, model).gradients + getattr(full, model).optimizer
        )
    assert lora.reference.weights == 0 and full.reference.weights > 0
    assert lora.peak < 0.5 * full.peak
    # QLoRA: 0.5 B/param + one float32 absmax per 64 weights for the quantized Linears, the rest in bf16.
    P, Q, A = qwen7b.causal_lm_params, qwen7b.causal_lm_quantized_params, qwen7b.lora_params
    quantized_bytes = qlora.student.weights - 2 * (P - Q) - 2 * A  # the adapter: bf16 (TRL casts it), below
    assert quantized_bytes / Q == pytest.approx(0.5 + 4 / 64, rel=1e-6)
    assert nf4_bytes_per_param(nested=True) < nf4_bytes_per_param(nested=False)
    # Shared base: the discriminator owns only its adapter and head; one base copy less than lora.
    assert shared.discriminator.weights == 4 * (qwen7b.lora_params + qwen7b.value_head_params)
    assert lora.peak - shared.peak == pytest.approx(lora.discriminator.weights - shared.discriminator.weights, rel=0.01)


def test_accumulation_adds_gradients_to_activations(qwen7b):
    one = estimate(qwen7b, qwen7b, _settings(gradient_accumulation_steps=1), "replicated")
    many = estimate(qwen7b, qwen7b, _settings(gradient_accumulation_steps=8), "replicated")
    assert many.phases["student update"] > one.phases["student update"]
    no_vllm = estimate(qwen7b, qwen7b, _settings(use_vllm=False), "lora")
    assert no_vllm.generation_kv_cache > 0 and "generation (no vLLM)" in no_vllm.phases


def test_bad_inputs(qwen7b, tiny_model_dir):
    with pytest.raises(MemoryEstimateError, match="Unknown mode 'zero4'"):
        estimate(qwen7b, qwen7b, _settings(), "zero4")
    with pytest.raises(MemoryEstimateError, match="num_gpus must be >= 1"):
        _settings(num_gpus=0)
    with pytest.raises(MemoryEstimateError, match="needs num_gpus >= 2"):
        estimate(qwen7b, qwen7b, _settings(num_gpus=1), "sharded")
    assert estimate_modes(qwen7b, qwen7b, _settings(num_gpus=1), ["sharded", "lora"])["sharded"] == "1 GPU"
    with pytest.raises(MemoryEstimateError, match="does not exist"):
        count_model("./no/such/model_dir")
    other = count_model(tiny_model_dir)
    with pytest.raises(MemoryEstimateError, match="discriminator_model_name_or_path unset"):
        estimate(qwen7b, other, _settings(), "shared_base")
    assert estimate_modes(qwen7b, other, _settings(), ["shared_base"])["shared_base"] == "separate discriminator model"


def test_without_peft_lora_modes_are_not_applicable(tiny_model_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    shape = count_model(tiny_model_dir)
    assert shape.lora_params is None
    result = estimate_modes(shape, shape, _settings(), ["replicated", "lora"])
    assert result["lora"] == "needs peft" and result["replicated"].peak > 0
    with pytest.raises(MemoryEstimateError, match=r"pip install 'gad_trl\[peft\]'"):
        estimate(shape, shape, _settings(), "qlora")


def test_qlora_counts_a_bf16_student_adapter_and_no_dequantised_copy(qwen7b):
    """TRL's GRPOTrainer casts a 4-bit student's adapter to bf16 (its weights, gradients and AdamW moments: 2 + 2 + 4
    B/param); the discriminator's adapter stays float32. bitsandbytes dequantises one weight per matmul, so the
    weights are the packed base + the rest in bf16 + the adapter, nothing more (the 7B shared_base_qlora estimate
    was 17% over a measured H200 peak while it counted the adapter in float32)."""
    s = _settings(student_dtype="bfloat16", discriminator_dtype="bfloat16")
    P, Q, A, H = qwen7b.causal_lm_params, qwen7b.causal_lm_quantized_params, qwen7b.lora_params, qwen7b.value_head_params
    for mode in ("qlora", "shared_base_qlora"):
        est = estimate(qwen7b, qwen7b, s, mode)
        assert est.student.weights == int(Q * nf4_bytes_per_param(False) + 2 * (P - Q)) + 2 * A
        assert (est.student.gradients, est.student.optimizer) == (2 * A, 4 * A)
        assert est.discriminator.gradients == 4 * (A + H) and est.discriminator.optimizer == 8 * (A + H)
    lora = estimate(qwen7b, qwen7b, s, "shared_base")  # a bf16 base: peft keeps the adapter float32
    assert (lora.student.gradients, lora.student.optimizer) == (4 * A, 8 * A)


def test_optimizer_steps_are_phases(qwen7b):
    """The discriminator's plain torch AdamW runs the foreach kernel on CUDA: sqrt(exp_avg_sq) of every parameter at
    once, next to the gradients; the student's default `adamw_torch_fused` updates in place."""
    s = _settings(student_dtype="bfloat16", discriminator_dtype="bfloat16", use_vllm=False)
    est = estimate(qwen7b, qwen7b, s, "replicated")
    resident = est.student.resident + est.reference.resident + est.discriminator.resident
    d = est.discriminator
    assert est.phases["discriminator optimizer step"] == resident + d.gradients + d.optimizer // 2
    assert est.phases["student optimizer step"] == resident + est.student.gradients
    foreach = estimate(qwen7b, qwen7b, _settings(student_dtype="bfloat16", discriminator_dtype="bfloat16",
                                                 optim="adamw_torch"), "replicated")
    assert foreach.phases["student optimizer step"] == resident + est.student.gradients + est.student.optimizer // 2
    # On CPU the per-tensor loop holds two temporaries of the largest tensor (the embedding) only.
    cpu = estimate(qwen7b, qwen7b, _settings(student_dtype="bfloat16", discriminator_dtype="bfloat16", device="cpu"),
                   "replicated")
    largest = 2 * qwen7b.vocab_size * qwen7b.hidden_size  # bf16 moment of the embedding
    assert cpu.phases["discriminator optimizer step"] == resident + d.gradients + 2 * largest


def test_teacher_cross_entropy_counts_full_vocabulary_logits(qwen7b):
    """The sft_loss_coef term is a plain forward: bf16 logits, their float32 copy and the float32 log-softmax over the
    whole vocabulary, for one teacher row per prompt of the micro-batch."""
    with_sft = estimate(qwen7b, qwen7b, _settings(student_dtype="bfloat16", num_generations=4), "replicated")
    without = estimate(qwen7b, qwen7b, _settings(student_dtype="bfloat16", num_generations=4, sft_loss_coef=0.0),
                       "replicated")
    logits = 1 * (2048 + 1536) * qwen7b.vocab_size * (2 + 4 + 4)  # ceil(4 / 4) = 1 teacher row
    assert with_sft.student.activations - without.student.activations > logits
