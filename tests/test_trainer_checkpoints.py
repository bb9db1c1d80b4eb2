"""save_model / checkpoints write the discriminator and its optimizer; resume restores everything."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from gad_trl.discriminator.model import last_token_scores
from tests.helpers.gad_helpers import crafted, make_trainer, params_of, same_params


def test_save_model_writes_a_reloadable_discriminator(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path / "run", max_steps=1)
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    student = AutoModelForCausalLM.from_pretrained(out)
    disc = AutoModelForSequenceClassification.from_pretrained(out / "discriminator")
    tok = AutoTokenizer.from_pretrained(out / "discriminator")
    assert disc.config.num_labels == 1
    assert same_params(params_of(trainer.discriminator), params_of(disc))
    assert same_params(params_of(trainer.model), params_of(student))
    # The reloaded model scores like the trainer's one, at the last token.
    device = trainer.accelerator.device
    ids = torch.tensor([tok("HELLO WORLD")["input_ids"] + [tok.eos_token_id]], device=device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.allclose(last_token_scores(disc.to(device), ids, mask), last_token_scores(trainer.discriminator, ids, mask))


def test_checkpoint_holds_discriminator_optimizer_and_scheduler(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    ckpt = tmp_path / "checkpoint-2"
    for name in ["discriminator/config.json", "discriminator/model.safetensors", "discriminator/tokenizer_config.json",
                 "discriminator_optimizer.pt", "discriminator_scheduler.pt", "optimizer.pt", "model.safetensors"]:
        assert (ckpt / name).exists(), name


def test_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """4 steps in one run vs 2 steps + resume from checkpoint-2 + 2 steps: same student and discriminator."""
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, critic_warmup_steps=1)
    full = make_trainer(tiny_model_dir, tmp_path / "full", **common)
    full.train()

    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    # Tolerance: CPU float32 kernels are deterministic for identical inputs; 1e-6 allows only rounding noise.
    assert same_params(params_of(full.model), params_of(resumed.model), atol=1e-6)
    assert same_params(params_of(full.discriminator), params_of(resumed.discriminator), atol=1e-6)
    steps_full = {int(s["step"]) for s in full.discriminator_optimizer.state_dict()["state"].values()}
    steps_resumed = {int(s["step"]) for s in resumed.discriminator_optimizer.state_dict()["state"].values()}
    assert steps_full == steps_resumed == {4}


@pytest.mark.parametrize("checkpoint", [2, 3], ids=["epoch_boundary", "mid_second_epoch"])
def test_resume_in_a_later_epoch_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, checkpoint):
    """4 prompts, 2 a step: checkpoint-2 ends epoch 0 and checkpoint-3 is inside epoch 1, whose prompt order the resumed
    run must draw as the uninterrupted run did (TRL's RepeatSampler draws a new order from its generator each epoch)."""
    common = dict(max_steps=4, save_strategy="steps", save_steps=1, critic_warmup_steps=1,
                  per_device_train_batch_size=8)
    full = make_trainer(tiny_model_dir, tmp_path / "full", num_rows=4, **common)
    full.train()
    assert full.state.epoch == 2.0

    resumed = make_trainer(tiny_model_dir, tmp_path / "resumed", num_rows=4, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{checkpoint}"))
    assert same_params(params_of(full.model), params_of(resumed.model), atol=1e-6)
    assert same_params(params_of(full.discriminator), params_of(resumed.discriminator), atol=1e-6)


def test_resume_from_a_non_gad_checkpoint_is_a_clear_error(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    ckpt = tmp_path / "a" / "checkpoint-1"
    import shutil

    shutil.rmtree(ckpt / "discriminator")
    again = make_trainer(tiny_model_dir, tmp_path / "b", max_steps=2)
    with pytest.raises(FileNotFoundError, match="no 'discriminator/' folder"):
        again.train(resume_from_checkpoint=str(ckpt))


def test_model_card_names_gad_and_the_paper(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    card = (tmp_path / "README.md").read_text()
    assert "GAD" in card and "2511.10643" in card and "Black-Box On-Policy Distillation" in card
    assert os.path.exists(tmp_path / "checkpoint-1" / "discriminator" / "config.json")


def test_reloaded_discriminator_scores_like_the_trainer_as_a_plain_reward_model(tiny_model_dir, tmp_path):
    """`AutoModelForSequenceClassification.from_pretrained(.../discriminator)` and a plain forward (transformers'
    pooling: last non-pad token) give the trainer's scores: the last token, EOS included (pad != EOS here)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.discriminator.model import pad_right

    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model()
    disc = AutoModelForSequenceClassification.from_pretrained(tmp_path / "discriminator").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "discriminator")
    messages = [{"role": "user", "content": "write the sun"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    encoder = trainer.discriminator_component.encoder
    sequences = [prompt + encoder.teacher_completion_ids(text)[0] for text in ["THE", "THE SUN IS UP", "A"]]
    assert all(seq[-1] == tok.convert_tokens_to_ids("<|im_end|>") != tok.pad_token_id for seq in sequences)
    ids, mask = pad_right(sequences, tok.pad_token_id, "cpu")
    with torch.no_grad():
        plain = disc(input_ids=ids, attention_mask=mask).logits[:, 0]
        trainer.discriminator.eval()
        expected = trainer.discriminator_component.score(sequences).cpu()
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["discriminator_optimizer.pt", "discriminator_scheduler.pt"])
def test_resume_refuses_a_crafted_discriminator_state(tiny_model_dir, tmp_path, name):
    out = tmp_path / "run"
    make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1).train()
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / name).is_file()
    marker = tmp_path / "pwned"
    crafted(checkpoint / name, marker)
    resumed = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(ValueError, match=name):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()

