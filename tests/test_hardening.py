"""Issue 11: no silent corruption (non-finite guard, precision, modes), no leaked secret, resume that always works,
and a clear error for each bad input."""

import json
import math
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from gad_trl import GADConfig
from gad_trl.guards import NonFiniteError, NonFiniteGuard
from gad_trl.health import unhealthy_signals
from gad_trl.redact import REDACTED, public_dataset_name, redact
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import make_args, make_trainer, params_of, same_params

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123"
PASSWORD = "s3cr3t-pw"


# ------------------------------------------------------------------------------------------ 1. non-finite guard


def test_guard_skips_counts_and_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_in_a_row=3)
    assert guard.check(True, 0, "", "") is True
    assert guard.check(False, 1, "non-finite loss nan", "") is False
    assert guard.check(True, 2, "", "") is True  # a finite update resets the streak
    assert guard.check(False, 3, "x", "") is False and guard.check(False, 4, "x", "") is False
    with pytest.raises(NonFiniteError, match="3 updates in a row.*lower it"):
        guard.check(False, 5, "non-finite loss nan", "Likely cause: lr too high; lower it.")
    assert guard.total == 4


def test_nonfinite_discriminator_update_is_skipped_and_never_reaches_the_weights(tiny_model_dir, tmp_path):
    """One NaN forward: that update is skipped (D unchanged, counted), the student gets zero rewards, not NaN."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, discriminator_max_nonfinite_updates=2)
    calls = []

    def nan_once(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 1 else output

    before = params_of(trainer.discriminator)
    original_update = trainer.discriminator_component.update
    snapshots = []

    def update(*a, **k):
        out = original_update(*a, **k)
        snapshots.append((params_of(trainer.discriminator), out[0].clone()))
        return out

    trainer.discriminator_component.update = update
    handle = trainer.discriminator.model.norm.register_forward_hook(nan_once)
    trainer.train()
    handle.remove()
    first_params, first_rewards = snapshots[0]
    assert same_params(before, first_params)  # the NaN update was not applied
    assert not same_params(first_params, snapshots[1][0])  # the next, finite one was
    skipped = [h["discriminator/nonfinite_skipped"] for h in trainer.state.log_history if "discriminator/nonfinite_skipped" in h]
    assert skipped == [1.0, 0.0]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert rewards[0] == 0.0 and all(math.isfinite(r) for r in rewards)
    for model in (trainer.model, trainer.discriminator):
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverging_discriminator_stops_with_a_clear_error(tiny_model_dir, tmp_path):
    """The issue's case: discriminator_learning_rate 1e4 used to exit 0 with an all-NaN discriminator. Whether one
    1e4 step makes this tiny model's scores NaN depends on the CPU's kernels (on some machines they saturate to 0), so
    the divergence itself is forced: every forward from the second update on is NaN, as a diverged model's is."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=12, discriminator_learning_rate=1e4,
                           max_grad_norm=1.0, discriminator_max_nonfinite_updates=2)
    updates = []
    original_update = trainer.discriminator_component.update

    def update(*a, **k):
        updates.append(1)
        return original_update(*a, **k)

    def diverged(module, inputs, output):
        return output * float("nan") if len(updates) > 1 else output

    trainer.discriminator_component.update = update
    trainer.discriminator.model.norm.register_forward_hook(diverged)
    with pytest.raises(NonFiniteError, match="discriminator_learning_rate=10000 is too high"):
        trainer.train()
    assert len(updates) == 3  # one applied, then two skipped in a row: the limit
    assert all(torch.isfinite(p).all() for p in trainer.discriminator.parameters())


def test_student_divergence_in_sampling_names_the_learning_rate(tiny_model_dir, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    def diverged(self, prompts):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(GRPOTrainer, "_generate", diverged)
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, learning_rate=1e4)
    with pytest.raises(NonFiniteError, match=r"student.*learning_rate=10000 is too high"):
        trainer.train()


class _Snapshots(TrainerCallback):
    """The student's weights after every optimizer step."""

    def __init__(self):
        self.params = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params.append(params_of(model))


def test_nonfinite_student_update_is_skipped_and_never_reaches_the_weights(tiny_model_dir, tmp_path):
    """NaN student gradients in the GRPO phase: that update is skipped (weights unchanged, counted), the next applies."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, max_grad_norm=1.0)
    snapshots = _Snapshots()
    trainer.add_callback(snapshots)
    before = params_of(trainer.model)
    weight = trainer.model.model.norm.weight
    calls = []
    handle = weight.register_hook(lambda grad: grad * float("nan") if len(calls.append(1) or calls) == 1 else grad)
    trainer.train()
    handle.remove()
    assert calls, "the student's GRPO loss never reached the hooked weight"
    assert same_params(before, snapshots.params[0])  # the NaN update was not applied
    assert not same_params(snapshots.params[0], snapshots.params[1])  # the next, finite one was
    skipped = [h["student/nonfinite_skipped"] for h in trainer.state.log_history if "student/nonfinite_skipped" in h]
    assert skipped == [1.0, 0.0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_student_loss_in_sft_warmup_stops_with_the_learning_rate(tiny_model_dir, tmp_path, monkeypatch):
    """A student loss that stays NaN (here in the SFT warm-up) is never applied and stops the run, naming the cause."""
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=6, sft_warmup_steps=6, learning_rate=1e4,
                           discriminator_max_nonfinite_updates=2)
    sft_loss = trainer.compute_sft_loss
    monkeypatch.setattr(trainer, "compute_sft_loss", lambda model, inputs: sft_loss(model, inputs) * float("nan"))
    before = params_of(trainer.model)
    with pytest.raises(NonFiniteError, match=r"student diverged: 2 updates in a row.*learning_rate=10000 is too high"):
        trainer.train()
    assert trainer.state.global_step == 1  # the first skip was counted as a step, the second stopped the run
    assert same_params(before, params_of(trainer.model))


def test_health_checks_treat_nan_as_unhealthy_and_flag_cut_teacher_answers():
    signals = unhealthy_signals({"accuracy": float("nan"), "score_diff": float("nan"), "loss": float("nan")}, "bradley_terry")
    assert "nonfinite" in signals and "accuracy" in signals["nonfinite"]
    assert "teacher_truncated_high" in unhealthy_signals({"accuracy": 0.7, "score_diff": 0.1,
                                                          "teacher_truncated_ratio": 1.0}, "bradley_terry")
    assert unhealthy_signals({"accuracy": 0.7, "score_diff": 0.1, "teacher_truncated_ratio": 0.0}, "bradley_terry") == {}


# ------------------------------------------------------------------------------------------ 2. secrets


def test_redact_at_any_depth_and_in_urls():
    config = {
        "discriminator_init_kwargs": {"token": SECRET, "dtype": "float32", "nested": [{"api_key": "k-123"}]},
        "vllm_server_base_url": f"http://me:{PASSWORD}@gpu-box:8000",
        "note": f"https://host/data?token=abc&x=1 and {SECRET}",
        "pad_token": "<|endoftext|>", "use_auth_token": True, "hub_token": None,
    }
    out = redact(config)
    assert out["discriminator_init_kwargs"] == {"token": REDACTED, "dtype": "float32", "nested": [{"api_key": REDACTED}]}
    assert out["vllm_server_base_url"] == f"http://me:{REDACTED}@gpu-box:8000"
    assert "abc" not in out["note"] and SECRET not in out["note"] and "x=1" in out["note"]
    assert out["pad_token"] == "<|endoftext|>" and out["use_auth_token"] is True and out["hub_token"] is None
    from gad_trl.config import SeqKDConfig

    seqkd = SeqKDConfig("x", use_cpu=True, model_init_kwargs={"token": SECRET}, hub_token=SECRET)
    for text in (repr(seqkd), seqkd.to_json_string(), pickle.dumps(seqkd).decode("latin1")):
        assert SECRET not in text
    assert seqkd.model_init_kwargs == {"token": SECRET}  # the object keeps the real value
    assert public_dataset_name("/home/me/private/lmsys.jsonl") == ".../lmsys.jsonl"
    assert public_dataset_name("ytz20/LMSYS-Chat-GPT-5-Chat-Response") == "ytz20/LMSYS-Chat-GPT-5-Chat-Response"


def test_no_secret_in_cards_hparams_events_or_training_args(tiny_model_dir, tmp_path):
    from gad_trl import hub

    out = tmp_path / "run"
    trainer = make_trainer(
        tiny_model_dir, out, max_steps=1, report_to=["tensorboard"],
        discriminator_init_kwargs={"token": SECRET, "dtype": "float32"},
        vllm_server_base_url=f"http://me:{PASSWORD}@127.0.0.1:8000",
    )
    assert trainer.args.discriminator_init_kwargs["token"] == SECRET  # the run itself keeps the real value
    trainer.dataset_name = "/home/someone/private/data.jsonl"
    trainer.train()
    trainer.save_model()
    section = hub.student_card_section(trainer, discriminator_location="me/x/discriminator")
    assert "`.../data.jsonl`" in section and "/home/someone" not in section
    texts = {"student card section": section, "repr": repr(trainer.args), "to_json_string": trainer.args.to_json_string()}
    for path in out.rglob("*"):
        if path.is_file():
            texts[str(path.relative_to(out))] = path.read_bytes().decode("latin1")
    assert any(k.startswith("runs/") for k in texts) and "training_args.bin" in texts
    assert "discriminator/README.md" in texts and "/home/someone" not in texts["discriminator/README.md"]
    for name, text in texts.items():
        assert SECRET not in text and PASSWORD not in text, f"secret leaked into {name}"
    reloaded = torch.load(out / "training_args.bin", weights_only=False)
    assert reloaded.discriminator_init_kwargs == {"token": REDACTED, "dtype": "float32"}


# ------------------------------------------------------------------------------------------ 4. resume


def test_bare_resume_flag_parses_as_latest_and_true_is_not_a_path(tmp_path, caplog):
    from gad_trl.cli.train import parse_args
    from gad_trl.run_folder import resolve_resume_checkpoint

    tiny = str(REPO / "recipes" / "tiny" / "gad.yaml")
    for argv in (["--config", tiny, "--resume_from_checkpoint"], ["--resume_from_checkpoint", "--config", tiny]):
        _, training_args, _ = parse_args(argv)
        assert str(training_args.resume_from_checkpoint).lower() == "true"
    for step, complete in ((2, True), (4, True), (6, False)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"trunc')  # killed while writing it
    with caplog.at_level("WARNING"):
        for value in (True, "True", "true"):
            assert resolve_resume_checkpoint(value, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-6" in caplog.text and "checkpoint-4" in caplog.text
    assert resolve_resume_checkpoint("false", str(tmp_path)) is None
    with pytest.raises(ValueError, match="not a complete checkpoint.*checkpoint-2"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))
    with pytest.raises(ValueError, match="no complete checkpoint-N"):
        resolve_resume_checkpoint(True, str(tmp_path / "empty"))


def test_resume_true_skips_a_checkpoint_half_written_by_a_kill(tiny_model_dir, tmp_path, caplog):
    import shutil

    first = make_trainer(tiny_model_dir, tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    first.train()
    # A SIGKILL during the next save: model files written, trainer_state.json never.
    partial = tmp_path / "checkpoint-2"
    shutil.copytree(tmp_path / "checkpoint-1", partial)
    (partial / "trainer_state.json").unlink()
    (partial / "optimizer.pt").write_bytes(b"\x00")
    (tmp_path / "checkpoint-1" / "discriminator_scheduler.pt").unlink()
    resumed = make_trainer(tiny_model_dir, tmp_path, max_steps=2)
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2
    assert f"Skipping incomplete checkpoint {partial}" in caplog.text
    assert "discriminator_scheduler.pt is missing" in caplog.text


# ------------------------------------------------------------------------------------------ 5. precision and modes


def test_scores_are_float32_under_bf16_autocast(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.model import backbone, last_token_scores

    torch.manual_seed(0)
    disc = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(disc.score.weight, std=1.0)
    ids = torch.randint(10, 200, (8, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = last_token_scores(disc, ids, mask)
        hidden = backbone(disc)(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
    expected = hidden.float() @ disc.score.weight.float().T
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, expected.squeeze(-1), atol=1e-5, rtol=1e-5)  # not rounded to bf16 (~1e-2 here)


def test_evaluation_scores_with_the_discriminator_in_eval_mode(tiny_model_dir, tmp_path):
    from gad_trl import GADTrainer

    args = make_args(tmp_path, max_steps=1, per_device_eval_batch_size=4)
    trainer = GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                         eval_dataset=Dataset.from_list(tiny_gad_rows(4, seed=1)))
    modes = []
    trainer.discriminator.register_forward_hook(lambda m, i, o: modes.append(m.training))
    backbone = trainer.discriminator.model
    backbone.register_forward_hook(lambda m, i, o: modes.append(m.training))
    trainer.evaluate()
    assert modes and not any(modes)
    assert trainer.discriminator.training  # back in train mode for the next step


def test_use_cpu_follows_the_device_for_bf16(tmp_path):
    assert GADConfig(str(tmp_path), use_cpu=True).bf16 is False
    assert GADConfig(str(tmp_path), use_cpu=True, bf16=True).bf16 is True  # an explicit value is kept


# ------------------------------------------------------------------------------------------ 6. defaults


def test_defaults_follow_the_paper_and_readme_agrees():
    import re

    args = GADConfig("x", use_cpu=True)
    assert (args.beta, args.max_grad_norm, args.learning_rate, args.temperature) == (1e-3, 0.2, 1e-6, 0.8)
    assert args.critic_warmup_steps == 0  # run-length dependent; the paper's 10 is in its recipe
    # The GADConfig defaults table lives in docs/configuration.md; the README links to that page.
    assert "(docs/configuration.md)" in (REPO / "README.md").read_text(), "README does not link docs/configuration.md"
    table = (REPO / "docs" / "configuration.md").read_text()
    for name in ("beta", "max_grad_norm", "critic_warmup_steps", "learning_rate", "temperature"):
        row = re.search(rf"^\| `{name}` \| ([^|]+) \|", table, re.M)
        assert row, f"docs/configuration.md's GADConfig table has no row for {name}"
        assert float(row.group(1).strip()) == getattr(args, name), name


# ------------------------------------------------------------------------------------------ 7. clear errors


def test_bad_data_files_are_named(tmp_path):
    from gad_trl.cli.utils import load_any_dataset
    from gad_trl.data import GADDataError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(GADDataError, match="empty.jsonl is empty"):
        load_any_dataset(str(empty))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "ok", "teacher_response": "ok"}\n{"prompt": "caf\xe9", "teacher_response": "x"}\n')
    with pytest.raises(GADDataError, match=r"latin1.jsonl, line 2: byte b'\\xe9' at column 16 is not UTF-8"):
        load_any_dataset(str(latin1))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(latin1.read_bytes())
    with pytest.raises(GADDataError, match="train.jsonl, line 2"):
        load_any_dataset(str(folder))


def test_unknown_role_and_bad_settings_are_clear_errors(tiny_model_dir, tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.cli.launch import command_line_checks
    from gad_trl.data import GADDataError, normalize_prompt

    with pytest.raises(GADDataError, match="role 'usr'; expected one of system"):
        normalize_prompt([{"role": "usr", "content": "hi"}], 3, "prompt")
    with pytest.raises(ValueError, match="max_completion_length must be a positive"):
        make_args(tmp_path, max_completion_length=0)
    with pytest.raises(ValueError, match="--config is given 2 times"):
        command_line_checks(["--config", "a.yaml", "--config=b.yaml"])
    with pytest.warns(UserWarning, match="student stays frozen for the whole run"):
        make_args(tmp_path, max_steps=5, critic_warmup_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_args(tmp_path, max_steps=6, critic_warmup_steps=5)
    missing = str(tmp_path / "no" / "such-model")
    with pytest.raises(FileNotFoundError, match="looks like a local folder but does not exist"):
        GADTrainer(missing, args=make_args(tmp_path), train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    with pytest.raises(FileNotFoundError, match="discriminator_model_name_or_path='./nope'"):
        GADTrainer(tiny_model_dir, args=make_args(tmp_path, discriminator_model_name_or_path="./nope"),
                   train_dataset=Dataset.from_list(tiny_gad_rows(4)))


# ------------------------------------------------------------------------------------------ 9. vLLM server exposure


def test_vllm_serve_warns_when_dev_mode_listens_beyond_loopback(capsys):
    from gad_trl.vllm.serve import serve_main

    serve_main(["--model", "m", "--dry-run"])
    assert "WARNING" not in capsys.readouterr().err
    serve_main(["--model", "m", "--host", "0.0.0.0", "--dry-run"])
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0" in err and "/collective_rpc" in err


# ------------------------------------------------------------------------------------------ 8. progress bar


def test_warnings_during_training_are_written_above_the_bar_and_restored_after():
    import logging
    import types

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import _TqdmLoggingHandler

    from gad_trl.callbacks import GADProgressCallback

    state = types.SimpleNamespace(max_steps=7, is_world_process_zero=True)
    bar = tqdm(total=7, disable=False)
    callback = GADProgressCallback(types.SimpleNamespace(training_bar=bar))
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        callback.on_train_begin(None, state, None)
        assert callback.bar is bar
        assert any(isinstance(h, _TqdmLoggingHandler) for h in root.handlers)  # health warnings go through tqdm.write
        callback.on_log(None, state, None, logs={"discriminator/accuracy": 0.6, "reward": 0.25})
        assert bar.postfix == "d_acc=0.6, reward=0.25"
        callback.on_train_end(None, state, None)
        assert root.handlers == before
    finally:
        bar.close()


def test_with_server_substitutes_the_url_and_returns_the_commands_exit_code(capfd):
    import sys

    from gad_trl.vllm.with_server import main

    code = main(["--url", "http://127.0.0.1:9", "--", sys.executable, "-c",
                 "import sys; print('got', sys.argv[1]); sys.exit(3)", "--vllm_server_base_url={url}"])
    assert code == 3
    assert "got --vllm_server_base_url=http://127.0.0.1:9" in capfd.readouterr().out
