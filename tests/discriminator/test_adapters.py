"""LoRA / QLoRA discriminators and the shared-base discriminator (a second adapter on a LoRA student's base)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from gad_trl.discriminator.inputs import DiscriminatorBatch
from gad_trl.discriminator.model import last_token_scores
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import make_args

peft = pytest.importorskip("peft")


def _trainer(model_dir, output_dir, student_lora=False, student_4bit=False, **overrides):
    from gad_trl import GADTrainer

    kwargs = {}
    if student_lora:
        kwargs["peft_config"] = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM")
    if student_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    overrides.setdefault("discriminator_lora_r", 4)
    overrides.setdefault("discriminator_lora_alpha", 8)
    overrides.setdefault("discriminator_lora_dropout", 0.0)
    args = make_args(output_dir, **overrides)
    return GADTrainer(model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)), **kwargs)


def _probe(trainer):
    from gad_trl.discriminator.model import pad_right

    tok = trainer.processing_class
    rows = [tok(text)["input_ids"] + [tok.eos_token_id] for text in ("HELLO WORLD", "the sum of two words")]
    return pad_right(rows, tok.pad_token_id, "cpu")


def _named(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("four_bit", [False, True], ids=["lora", "qlora"])
def test_peft_discriminator_trains_adapter_and_head_and_exports(tiny_model_dir, tmp_path, four_bit, monkeypatch):
    """LoRA (and QLoRA, nf4 on CPU): only the adapter and the head train; discriminator/ reloads as a PEFT model and
    discriminator_merged/ as a plain AutoModelForSequenceClassification, both scoring like the trainer; the merged
    folder is what goes to the discriminator's own Hub repo."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.adapters import keep_4bit_layout_for_training, load_saved_discriminator

    if four_bit:
        pytest.importorskip("bitsandbytes")  # in the `dev` and `quantization` extras
    trainer = _trainer(tiny_model_dir, tmp_path / "run", max_steps=2, discriminator_use_peft=True,
                       discriminator_load_in_4bit=four_bit, hub_model_id="me/tiny-gad",
                       discriminator_hub_model_id="me/tiny-gad-discriminator")
    disc = trainer.discriminator
    assert isinstance(disc, PeftModel) and disc.peft_config["default"].task_type == "SEQ_CLS"
    if four_bit:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in disc.modules())
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    assert any("score" in n for n in trainable)
    before = _named(disc)
    trainer.train()
    after = _named(disc)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable and any("score" in n for n in changed)

    out = tmp_path / "run"
    trainer.save_model()
    ids, mask = _probe(trainer)
    with torch.no_grad():
        expected = last_token_scores(disc, ids, mask)
        base_kwargs = {}
        if four_bit:
            base_kwargs = {"quantization_config": disc.get_base_model().config.quantization_config, "device_map": "cpu"}
        reloaded = load_saved_discriminator(str(out / "discriminator"), **base_kwargs)  # as eval-discriminator does
        assert isinstance(reloaded, PeftModel)
        keep_4bit_layout_for_training(reloaded)  # the trainer's kernels (bitsandbytes' CPU eval kernel is bf16)
        merged = AutoModelForSequenceClassification.from_pretrained(out / "discriminator_merged")
        assert not any("Linear4bit" in type(m).__name__ for m in merged.modules())
        assert torch.allclose(last_token_scores(reloaded, ids, mask), expected, atol=1e-5)
        # QLoRA: merged into the dequantized 4-bit base (what training saw), so the scores agree closely too.
        assert torch.allclose(last_token_scores(merged, ids, mask), expected, atol=1e-4)
    if not four_bit:
        from gad_trl.hub import push_to_hub
        from tests.test_hub import FakeHub

        hub = FakeHub(tmp_path / "hub").install(monkeypatch)
        push_to_hub(trainer)
        pushed = {u["repo_id"]: set(u["files"]) for u in hub.uploads}
        assert "model.safetensors" in pushed["me/tiny-gad-discriminator"]
        assert "adapter_config.json" not in pushed["me/tiny-gad-discriminator"]
        assert not any(f.startswith("discriminator") for f in pushed["me/tiny-gad"])
        assert "PeftModel.from_pretrained" in (out / "discriminator" / "README.md").read_text()  # says what it holds
        # The student's card points at the discriminator's own repo, which holds the merged model.
        assert "`me/tiny-gad-discriminator` (trained as a LoRA adapter, merged" in (out / "README.md").read_text()


@pytest.mark.parametrize("shared_base", [False, True], ids=["lora", "shared_base"])
def test_saved_peft_discriminator_keeps_its_mean_pooling(tiny_model_dir, tmp_path, shared_base):
    """The adapter folder has no config.json for `discriminator_pooling`: the reload (eval-discriminator's loader) and
    the merged export must still score with mean pooling, as the trained discriminator does."""
    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.adapters import load_saved_discriminator
    from gad_trl.discriminator.model import score_sequences
    from gad_trl.discriminator.pooling import discriminator_pooling, set_discriminator_pooling
    from tests.helpers.gad_helpers import response_sequences

    options = {"discriminator_shared_base": True} if shared_base else {"discriminator_use_peft": True}
    trainer = _trainer(tiny_model_dir, tmp_path / "run", student_lora=shared_base, max_steps=1,
                       discriminator_pooling="mean", **options)
    trainer.train()
    trainer.save_model()
    seqs, starts = response_sequences(trainer)
    pad = trainer.processing_class.pad_token_id

    def scores(model, pooling=None):
        if pooling:
            set_discriminator_pooling(model, pooling)
        with torch.no_grad():
            return score_sequences(model.eval(), seqs, pad, "cpu", None, starts)

    from gad_trl.discriminator.adapters import discriminator_scope

    with discriminator_scope(trainer.discriminator):
        expected = scores(trainer.discriminator)
    reloaded = load_saved_discriminator(str(tmp_path / "run" / "discriminator"))
    assert discriminator_pooling(reloaded) == "mean"
    assert torch.allclose(scores(reloaded), expected, atol=1e-5)
    assert not torch.allclose(scores(reloaded, "last"), expected, atol=1e-3)  # the pooling is what the check sees
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "discriminator_merged")
    assert discriminator_pooling(merged) == "mean"
    assert torch.allclose(scores(merged), expected, atol=1e-4)


def test_shared_base_one_base_and_each_optimizer_owns_its_parameters(tiny_model_dir, tmp_path):
    from trl.generation.vllm_generation import VLLMGeneration

    from gad_trl.discriminator.adapters import SharedBaseDiscriminator
    from gad_trl.discriminator.model import backbone

    trainer = _trainer(tiny_model_dir, tmp_path / "run", student_lora=True, max_steps=1,
                       discriminator_shared_base=True)
    student, disc = trainer.model, trainer.discriminator
    assert isinstance(disc, SharedBaseDiscriminator) and trainer.ref_model is None
    # One copy of the base: every tensor the discriminator computes with is the student's tensor.
    student_storage = {p.untyped_storage().data_ptr() for p in student.parameters()}
    assert {p.untyped_storage().data_ptr() for p in backbone(disc).parameters()} <= student_storage
    assert backbone(disc) is student.get_base_model().model

    base_names = {n for n, _ in student.named_parameters() if "lora_" not in n}
    student_adapter = {n for n, _ in student.named_parameters() if "lora_" in n and ".default." in n}
    disc_adapter = {n for n, _ in student.named_parameters() if "lora_" in n and ".discriminator." in n}
    assert student_adapter and disc_adapter and not student_adapter & disc_adapter

    # The discriminator's update alone changes only its adapter and head.
    before, head0 = _named(student), disc.score.weight.detach().clone()
    ids, mask = _probe(trainer)
    seqs = [row[: int(m.sum())] for row, m in zip(ids.tolist(), mask)]
    with torch.enable_grad():
        from gad_trl.discriminator.adapters import discriminator_scope

        with discriminator_scope(disc):
            trainer.discriminator_component.update(
                DiscriminatorBatch.of_sequences(seqs[:1], seqs[1:] * 2, torch.tensor([0, 0]), [1, 1, 1]), 0)
    mid = _named(student)
    changed = {n for n in before if not torch.equal(before[n], mid[n])}
    assert changed and changed <= disc_adapter and not torch.equal(head0, disc.score.weight)

    # A full GAD step: the student's optimizer holds exactly its adapter, the discriminator's its adapter and head.
    trainer.train()
    after = _named(student)
    changed = {n for n in mid if not torch.equal(mid[n], after[n])}
    assert not changed & base_names
    assert changed & student_adapter and changed & disc_adapter
    ids_of = {id(p): n for n, p in student.named_parameters()}
    student_opt = {ids_of.get(id(p)) for g in trainer.optimizer.param_groups for p in g["params"]}
    disc_opt = {id(p) for g in trainer.discriminator_optimizer.param_groups for p in g["params"]}
    assert student_opt == student_adapter
    assert {ids_of.get(i) for i in disc_opt if i != id(disc.score.weight)} == disc_adapter
    assert id(disc.score.weight) in disc_opt
    assert {n for n in student_adapter if student.get_parameter(n).requires_grad} == student_adapter  # restored

    # The student does not see the discriminator adapter: its logits, its greedy generations and the weights TRL's
    # vLLM sync sends are unchanged when the discriminator adapter is overwritten with noise.
    class _OneProcess:  # what VLLMGeneration._iter_named_params needs to gather parameters: nothing, here
        is_fsdp = False

        @staticmethod
        def gather_params(params):
            from contextlib import nullcontext

            return nullcontext()

    sync = VLLMGeneration.__new__(VLLMGeneration)
    sync.model, sync._dist = student, _OneProcess()

    ids, mask = _probe(trainer)

    def student_view():
        student.eval()
        with torch.no_grad():
            logits = student(input_ids=ids, attention_mask=mask).logits
            generated = student.generate(input_ids=ids[:1, : int(mask[0].sum())], max_new_tokens=6, do_sample=False)
        return logits, generated

    logits, generated = student_view()
    with torch.no_grad():
        for name in disc_adapter:
            student.get_parameter(name).normal_(std=1.0)
    logits2, generated2 = student_view()
    assert torch.equal(logits, logits2) and torch.equal(generated, generated2)
    synced = {n: t.clone() for n, t in sync._iter_named_params()}
    assert not any("lora" in n or n.startswith("score") for n in synced)
    q_proj = student.get_base_model().model.layers[0].self_attn.q_proj
    with torch.no_grad():
        student_merged = q_proj.base_layer.weight + q_proj.get_delta_weight("default")
        assert q_proj.get_delta_weight("discriminator").abs().max() > 1e-2  # would show if it were merged too
    assert torch.allclose(synced["model.layers.0.self_attn.q_proj.weight"], student_merged, atol=1e-6, rtol=0)
    with torch.no_grad(), discriminator_scope(disc):  # ... while the discriminator does see it
        assert not torch.allclose(last_token_scores(disc, ids, mask), torch.zeros(2))


def test_shared_base_checkpoint_resumes_exactly(tiny_model_dir, tmp_path):
    """2 steps vs 1 + resume + 1: the student adapter, the discriminator adapter and head agree; the checkpoint
    holds both adapters (the student's at the root, the discriminator's with its head in discriminator/)."""
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, discriminator_shared_base=True)
    full = _trainer(tiny_model_dir, tmp_path / "full", student_lora=True, **common)
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").exists()
    assert (ckpt / "discriminator" / "adapter_model.safetensors").exists()
    resumed = _trainer(tiny_model_dir, tmp_path / "resumed", student_lora=True, **common)
    resumed.train(resume_from_checkpoint=str(ckpt))
    a, b = _named(full.model), _named(resumed.model)
    lora = [n for n in a if "lora_" in n]
    assert any(".discriminator." in n for n in lora) and any(".default." in n for n in lora)
    assert all(torch.allclose(a[n], b[n], atol=1e-6, rtol=0) for n in lora)
    assert torch.allclose(full.discriminator.score.weight, resumed.discriminator.score.weight, atol=1e-6, rtol=0)


def test_peft_errors_name_the_fix(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.adapters import add_lora, check_resume_layout, discriminator_peft_config

    with pytest.raises(ValueError, match="use_peft: true"):
        _trainer(tiny_model_dir, tmp_path / "a", discriminator_shared_base=True)  # full student
    with pytest.raises(ValueError, match="discriminator_sharding to 'auto' or 'none'"):
        _trainer(tiny_model_dir, tmp_path / "a", discriminator_use_peft=True, discriminator_sharding="fsdp2")
    with pytest.raises(ValueError, match="discriminator_use_peft: true"):
        make_args(tmp_path, discriminator_load_in_4bit=True)
    from gad_trl.discriminator.adapters import quantized_init_kwargs

    with pytest.raises(ValueError, match="discriminator_load_in_4bit"):  # a student's 4-bit config is not inherited
        quantized_init_kwargs({"quantization_config": object()}, make_args(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'gad_trl\[quantization\]'"):
        make_args(tmp_path, discriminator_use_peft=True, discriminator_load_in_4bit=True)
    monkeypatch.undo()

    full_dir, adapter_dir = tmp_path / "full_disc", tmp_path / "adapter_disc"
    full = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    full.save_pretrained(full_dir)
    lora = add_lora(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1),
                    discriminator_peft_config(make_args(tmp_path, discriminator_use_peft=True)))
    lora.save_pretrained(adapter_dir)
    with pytest.raises(ValueError, match="holds a LoRA discriminator adapter.*discriminator_use_peft: true"):
        check_resume_layout(full, str(adapter_dir))
    with pytest.raises(ValueError, match="holds a full discriminator.*discriminator_model_name_or_path"):
        check_resume_layout(lora, str(full_dir))
    check_resume_layout(lora, str(adapter_dir))
    check_resume_layout(full, str(full_dir))


def test_peft_flags_parse_like_trl_model_config():
    from gad_trl.cli import train as train_cli

    _, args, model_args = train_cli.parse_args([
        "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o", "--use_peft", "true",
        "--load_in_4bit", "true", "--discriminator_shared_base", "true", "--discriminator_lora_r", "8",
        "--discriminator_lora_alpha", "16", "--discriminator_lora_dropout", "0.1",
        "--discriminator_lora_target_modules", "q_proj", "v_proj",
    ])
    assert model_args.use_peft and model_args.load_in_4bit and args.discriminator_shared_base
    assert (args.discriminator_lora_r, args.discriminator_lora_alpha, args.discriminator_lora_dropout) == (8, 16, 0.1)
    assert args.discriminator_lora_target_modules == ["q_proj", "v_proj"]
    _, args, _ = train_cli.parse_args([
        "--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o", "--discriminator_use_peft", "true",
        "--discriminator_load_in_4bit", "true", "--discriminator_bnb_4bit_quant_type", "fp4",
    ])
    assert args.discriminator_use_peft and args.discriminator_load_in_4bit
    assert args.discriminator_bnb_4bit_quant_type == "fp4"


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

