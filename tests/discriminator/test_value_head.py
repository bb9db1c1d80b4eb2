"""Any decoder as discriminator: architectures without a `*ForSequenceClassification` class (Cohere2 here; GLM4-MoE and
NemotronH too in transformers 5.17) get a `GADValueHeadModel` (their `AutoModel` body + a bias-free `score` head)
that scores, trains, saves and reloads like the sequence-classification discriminator."""

import json
import os

import pytest
import torch
from datasets import Dataset

from gad_trl.discriminator import value_head
from gad_trl.discriminator.adapters import load_saved_discriminator, save_discriminator_adapter
from gad_trl.discriminator.model import backbone, load_discriminator, score_sequences, sequence_scores
from gad_trl.discriminator.pooling import set_discriminator_pooling
from gad_trl.discriminator.value_head import GADValueHeadModel
from gad_trl.tiny import build_tiny_model, build_tiny_tokenizer, tiny_gad_rows
from tests.helpers.gad_helpers import make_args, params_of, same_params


def _sequences(tokenizer):
    """Prompt + response + EOS token lists of different lengths (right-padded when batched), and response starts."""
    seqs, starts = [], []
    for row in tiny_gad_rows(4, seed=3):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        response = tokenizer(row["teacher_response"], add_special_tokens=False).input_ids
        seqs.append(p + response + [tokenizer.eos_token_id])
        starts.append(len(p))
    assert len({len(s) for s in seqs}) > 1  # padding matters
    return seqs, starts


def _scores(model, tokenizer, pooling="last"):
    seqs, starts = _sequences(tokenizer)
    set_discriminator_pooling(model, pooling)
    with torch.no_grad():
        return score_sequences(model.eval(), seqs, tokenizer.pad_token_id, "cpu", None, starts)


def _build_cohere2(tokenizer, seed=0):
    """A tiny Cohere2 causal LM (one sliding-window and one full-attention layer): no ForSequenceClassification."""
    from transformers import Cohere2Config, Cohere2ForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    config = Cohere2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, dtype="float32",
    )  # fmt: skip
    model = Cohere2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def cohere2_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-cohere2")
    _build_cohere2(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_cohere2_has_no_sequence_classification_class():
    """The premise of the Cohere2 tests below (and of the fallback): transformers 5.17 maps none of these."""
    from transformers import AutoModelForSequenceClassification, Cohere2Config, Glm4MoeConfig, NemotronHConfig

    for config_class in (Cohere2Config, Glm4MoeConfig, NemotronHConfig):
        assert config_class not in AutoModelForSequenceClassification._model_mapping
        assert not value_head.has_sequence_classification(config_class())


# ---------------------------------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("from_path", [False, True], ids=["from_instance", "from_path"])
def test_value_head_scores_exactly_as_sequence_classification(tiny_model_dir, tokenizer, monkeypatch, pooling,
                                                              from_path):
    """Same Qwen2 weights, same head weight: the fallback and Qwen2ForSequenceClassification give identical scores
    through score_sequences / sequence_scores (right-padded batches) and identical plain-forward logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    student = tiny_model_dir if from_path else AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seq_cls = load_discriminator(student, pad_token_id=tok.pad_token_id)
    monkeypatch.setattr(value_head, "has_sequence_classification", lambda config: False)
    fallback = load_discriminator(student, pad_token_id=tok.pad_token_id)
    assert type(seq_cls) is Qwen2ForSequenceClassification and type(fallback) is GADValueHeadModel
    assert fallback.score.bias is None and fallback.score.weight.shape == seq_cls.score.weight.shape
    assert sorted(fallback.state_dict()) == sorted(seq_cls.state_dict())  # same layout: model.* + score.weight
    with torch.no_grad():
        fallback.score.weight.copy_(seq_cls.score.weight)
    assert same_params(params_of(fallback), params_of(seq_cls))

    expected = _scores(seq_cls, tok, pooling)
    assert torch.equal(_scores(fallback, tok, pooling), expected)
    seqs, starts = _sequences(tok)
    from gad_trl.discriminator.model import pad_right

    ids, mask = pad_right(seqs, tok.pad_token_id, "cpu")
    response_mask = (torch.arange(ids.size(1)).unsqueeze(0) >= torch.tensor(starts).unsqueeze(1)).long()
    with torch.no_grad():
        a = sequence_scores(seq_cls, ids, mask, response_mask, pooling)
        b = sequence_scores(fallback, ids, mask, response_mask, pooling)
        assert torch.equal(a, b)
        # transformers' own reward-model forward (pooled at the last non-pad token) agrees too
        assert torch.equal(seq_cls(input_ids=ids, attention_mask=mask).logits,
                           fallback(input_ids=ids, attention_mask=mask).logits)


def test_forced_value_head_folder_reloads_as_value_head(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """The marker in config.json picks the class again, also for an architecture that has a seq-cls class."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(value_head, "has_sequence_classification", lambda config: False)
    disc = load_discriminator(tiny_model_dir, pad_token_id=tok.pad_token_id)
    disc.save_pretrained(tmp_path / "d")
    expected = _scores(disc, tok)
    monkeypatch.undo()  # from here on Qwen2 has its seq-cls class again: only the saved marker decides
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["gad_value_head"] is True and config["architectures"] == ["GADValueHeadModel"]
    reloaded = load_saved_discriminator(str(tmp_path / "d"))
    assert type(reloaded) is GADValueHeadModel and torch.equal(_scores(reloaded, tok), expected)


# ---------------------------------------------------------------------------------------------------------- (b)
@pytest.mark.parametrize("from_path", [False, True], ids=["from_instance", "from_path"])
def test_cohere2_discriminator_scores_trains_saves_and_reloads(cohere2_dir, tokenizer, tmp_path, from_path):
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(cohere2_dir)
    disc = load_discriminator(cohere2_dir if from_path else student, pad_token_id=tokenizer.pad_token_id)
    assert type(disc) is GADValueHeadModel and type(backbone(disc)).__name__ == "Cohere2Model"
    assert disc.config.pad_token_id == tokenizer.pad_token_id and disc.config.num_labels == 1
    assert same_params(params_of(backbone(student)), params_of(backbone(disc)))  # body initialised from the student
    assert disc._no_split_modules == {"Cohere2DecoderLayer"}  # what FSDP2 shards layer by layer

    # One training step: every weight gets a gradient, head included.
    seqs, _ = _sequences(tokenizer)
    disc.train()
    scores = score_sequences(disc, seqs, tokenizer.pad_token_id, "cpu")
    assert scores.shape == (len(seqs),) and torch.isfinite(scores).all()
    (scores[:2].mean() - scores[2:].mean()).backward()
    assert disc.score.weight.grad is not None and disc.score.weight.grad.abs().sum() > 0
    assert backbone(disc).layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    before = params_of(disc)
    torch.optim.SGD(disc.parameters(), lr=0.1).step()
    assert not same_params(before, params_of(disc))

    expected = _scores(disc, tokenizer)
    saved = tmp_path / "discriminator"
    disc.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    assert "model.safetensors" in os.listdir(saved) and not any(f.endswith(".bin") for f in os.listdir(saved))
    config = json.loads((saved / "config.json").read_text())
    assert config["architectures"] == ["GADValueHeadModel"] and config["gad_value_head"] is True
    assert config["model_type"] == "cohere2"
    # The package's loaders (eval-discriminator's, and GADConfig.discriminator_model_name_or_path's) and the class.
    for reloaded in (
        load_saved_discriminator(str(saved)),
        load_discriminator(cohere2_dir, discriminator_model_name_or_path=str(saved)),
        GADValueHeadModel.from_pretrained(saved),
    ):
        assert type(reloaded) is GADValueHeadModel
        assert torch.equal(_scores(reloaded, tokenizer), expected)


def test_cohere2_discriminator_under_gradient_checkpointing(cohere2_dir, tokenizer):
    disc = load_discriminator(cohere2_dir, pad_token_id=tokenizer.pad_token_id)
    disc.gradient_checkpointing_enable()
    assert disc.is_gradient_checkpointing
    disc.train()
    seqs, _ = _sequences(tokenizer)
    score_sequences(disc, seqs, tokenizer.pad_token_id, "cpu").sum().backward()
    assert backbone(disc).layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_lora_on_the_value_head_fallback_trains_adapter_and_head(cohere2_dir, tokenizer, tmp_path, four_bit):
    pytest.importorskip("peft")
    if four_bit:
        pytest.importorskip("bitsandbytes")
    from peft import PeftModel

    from gad_trl.discriminator.adapters import keep_4bit_layout_for_training

    args = make_args(tmp_path, discriminator_use_peft=True, discriminator_load_in_4bit=four_bit,
                     discriminator_lora_r=4, discriminator_lora_alpha=8, discriminator_lora_dropout=0.0,
                     discriminator_lora_target_modules=["q_proj", "v_proj"])  # PEFT has no default for cohere2
    disc = load_discriminator(cohere2_dir, pad_token_id=tokenizer.pad_token_id, args=args)
    assert isinstance(disc, PeftModel) and type(disc.get_base_model()) is GADValueHeadModel
    assert disc.peft_config["default"].task_type == "SEQ_CLS"
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)  # the head trains in full (modules_to_save)
    before = {n: p.detach().clone() for n, p in disc.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=1e-2)
    seqs, _ = _sequences(tokenizer)
    disc.train()
    for _ in range(2):  # LoRA B starts at zero: the second step moves A too
        scores = score_sequences(disc, seqs, tokenizer.pad_token_id, "cpu")
        (scores[:2].mean() - scores[2:].mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in disc.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= trainable and any(".score." in n for n in changed) and any("lora_B" in n for n in changed)

    keep_4bit_layout_for_training(disc)
    expected = _scores(disc, tokenizer)
    save_discriminator_adapter(disc, str(tmp_path / "adapter"))
    kwargs = {}
    if four_bit:
        kwargs = {"quantization_config": disc.get_base_model().config.quantization_config, "device_map": "cpu"}
    reloaded = load_saved_discriminator(str(tmp_path / "adapter"), **kwargs)
    keep_4bit_layout_for_training(reloaded)
    assert isinstance(reloaded, PeftModel) and type(reloaded.get_base_model()) is GADValueHeadModel
    assert torch.allclose(_scores(reloaded, tokenizer), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- (d)
@pytest.mark.parametrize("mode", ["full", "lora", "shared_base"])
def test_gad_trainer_on_cohere2(cohere2_dir, tokenizer, tmp_path, mode):
    """A short GAD run on a student whose architecture has no ForSequenceClassification: the discriminator trains and
    its saved folders (full, adapter, merged) reload through the package's loader with the trained scores."""
    from gad_trl import GADTrainer
    from gad_trl.discriminator.adapters import discriminator_scope

    overrides, kwargs = {}, {}
    lora = dict(discriminator_lora_r=4, discriminator_lora_alpha=8, discriminator_lora_dropout=0.0,
                discriminator_lora_target_modules=["q_proj", "v_proj"])
    if mode == "lora":
        overrides = dict(discriminator_use_peft=True, **lora)
    elif mode == "shared_base":
        import peft

        overrides = dict(discriminator_shared_base=True, **lora)
        kwargs["peft_config"] = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM")
    out = tmp_path / "run"
    args = make_args(out, max_steps=2, **overrides)
    trainer = GADTrainer(cohere2_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)), **kwargs)
    disc = trainer.discriminator
    if mode == "full":
        assert type(disc) is GADValueHeadModel
    elif mode == "lora":
        assert type(disc.get_base_model()) is GADValueHeadModel
    with discriminator_scope(disc):
        before = {n: p.detach().clone() for n, p in disc.named_parameters() if p.requires_grad}
    trainer.train()
    with discriminator_scope(disc):
        after = {n: p.detach().clone() for n, p in disc.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the discriminator learned
    logged = [h for h in trainer.state.log_history if "discriminator/loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["discriminator/loss"])) for h in logged)
    trainer.save_model()
    with discriminator_scope(disc):
        expected = _scores(disc, tokenizer)
    reloaded = load_saved_discriminator(str(out / "discriminator"))
    assert torch.allclose(_scores(reloaded, tokenizer), expected, atol=1e-5)
    card = (out / ("discriminator" if mode == "full" else "discriminator_merged") / "README.md").read_text()
    assert "model = GADValueHeadModel.from_pretrained(repo" in card  # AutoModelForSequenceClassification would fail
    if mode != "full":  # the plain export of a LoRA / shared-base discriminator is a GADValueHeadModel folder
        merged = load_saved_discriminator(str(out / "discriminator_merged"))
        assert type(merged) is GADValueHeadModel
        assert torch.allclose(_scores(merged, tokenizer), expected, atol=1e-4)


def test_gad_trainer_resumes_a_cohere2_discriminator(cohere2_dir, tmp_path):
    """A checkpoint's discriminator/ (a GADValueHeadModel folder) resumes exactly."""
    from gad_trl import GADTrainer

    rows = Dataset.from_list(tiny_gad_rows(8, seed=0))
    full = GADTrainer(cohere2_dir, args=make_args(tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=1),
                      train_dataset=rows)
    full.train()
    resumed = GADTrainer(cohere2_dir, args=make_args(tmp_path / "b", max_steps=2), train_dataset=rows)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))
    assert same_params(params_of(resumed.discriminator), params_of(full.discriminator), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- helpers
def test_build_tiny_qwen2_still_gets_the_sequence_classification_class(tokenizer):
    """Without the marker, an architecture with a seq-cls class keeps it (no behaviour change for Qwen2, Llama...)."""
    import copy

    from transformers import Qwen2ForSequenceClassification

    student = build_tiny_model(tokenizer)
    assert value_head.has_sequence_classification(student.config)
    config = copy.deepcopy(student.config)
    config.num_labels = 1
    assert type(value_head.value_model_from_config(config)) is Qwen2ForSequenceClassification


# ---------------------------------------------------------------------------------------------------------- FSDP2
@pytest.mark.slow
def test_sharded_cohere2_discriminator_trains_and_resumes_like_the_replicated_one(cohere2_dir, tmp_path):
    """tests/helpers/sharded_train.py (2 CPU processes, gloo) on the Cohere2 student: the FSDP2-sharded value-head
    discriminator trains as the replicated one, resumes exactly, and saves a folder the package reloads."""
    import subprocess
    import sys
    from pathlib import Path

    from gad_trl.vllm.launcher import free_port

    script = Path(__file__).resolve().parents[1] / "helpers" / "sharded_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(script), cohere2_dir, str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(script.parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["sharded_flags"] == [False, True]
        assert r["same_start"] == 0.0 and r["changed"] > 1e-3
        assert r["sharded_vs_replicated"] < 1e-5 and r["resumed_vs_uninterrupted"] < 1e-5
        assert r["local_numel"] < 0.6 * r["full_numel"]
    saved = load_saved_discriminator(str(tmp_path / "sharded" / "discriminator"))
    initial = load_discriminator(cohere2_dir)
    assert type(saved) is GADValueHeadModel
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(saved.state_dict()[key], initial.state_dict()[key])  # the trained weights


# ---------------------------------------------------------------------------------------------------------- others
def _glm4_moe(tokenizer):
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    return Glm4MoeForCausalLM(Glm4MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip


def _nemotron_h(tokenizer):
    from transformers import NemotronHConfig, NemotronHForCausalLM

    return NemotronHForCausalLM(NemotronHConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        hybrid_override_pattern="M*-", num_attention_heads=2, num_key_value_heads=1, head_dim=16, mamba_num_heads=4,
        mamba_head_dim=8, ssm_state_size=8, n_groups=1, mamba_chunk_size=16, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip


@pytest.mark.parametrize("build", [_glm4_moe, _nemotron_h], ids=["glm4_moe", "nemotron_h"])
def test_other_decoders_without_sequence_classification(tokenizer, tmp_path, build):
    """GLM4-MoE (MoE experts, whose checkpoint keys transformers converts on load) and NemotronH (Mamba hybrid)."""
    torch.manual_seed(0)
    student = build(tokenizer)
    student.save_pretrained(tmp_path / "student")
    disc = load_discriminator(str(tmp_path / "student"), pad_token_id=tokenizer.pad_token_id)
    assert type(disc) is GADValueHeadModel
    assert same_params(params_of(backbone(student)), params_of(backbone(disc)))
    seqs, _ = _sequences(tokenizer)
    score_sequences(disc.train(), seqs, tokenizer.pad_token_id, "cpu").sum().backward()
    assert disc.score.weight.grad.abs().sum() > 0
    expected = _scores(disc, tokenizer)
    disc.save_pretrained(tmp_path / "disc")
    assert torch.equal(_scores(load_saved_discriminator(str(tmp_path / "disc")), tokenizer), expected)


def test_memory_estimate_counts_the_value_head_discriminator(cohere2_dir):
    from gad_trl.memory.estimator import count_model

    shape = count_model(cohere2_dir, lora_target_modules=["q_proj", "v_proj"])  # PEFT has no cohere2 default
    disc = load_discriminator(cohere2_dir)
    assert shape.discriminator_params == sum(p.numel() for p in disc.parameters())
    assert shape.value_head_params == disc.score.weight.numel() == 32
