"""Reliability round 3: no checkpoint file is unpickled as code; a reference model the student cannot be reloaded
for is a clear error."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import make_args, make_trainer


class _RunsCodeWhenUnpickled:
    """Unpickling calls `open(marker, "w")`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker):
    torch.save({"state": {}, "param_groups": [{"params": ["x"]}], "payload": _RunsCodeWhenUnpickled(marker)}, path)


def test_load_checkpoint_file_refuses_pickled_code_and_names_the_file(tmp_path):
    from gad_trl.run_folder import load_checkpoint_file

    path, marker = tmp_path / "discriminator_optimizer.pt", tmp_path / "pwned"
    _crafted(path, marker)
    with pytest.raises(ValueError, match="discriminator_optimizer.pt.*not loaded"):
        load_checkpoint_file(str(path))
    assert not marker.exists()
    torch.save({"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}, path)
    assert load_checkpoint_file(str(path))["param_groups"][0]["lr"] == 1e-3  # plain states still load


def test_sharded_optimizer_state_is_loaded_as_data_only(tmp_path):
    """`discriminator_sharding.load_optimizer` used `weights_only=False`: a crafted file ran code on resume."""
    from gad_trl.discriminator.sharding import load_optimizer

    model = torch.nn.Linear(2, 1)
    path, marker = tmp_path / "discriminator_optimizer.pt", tmp_path / "pwned"
    _crafted(path, marker)
    with pytest.raises(ValueError, match="discriminator_optimizer.pt"):
        load_optimizer(model, torch.optim.AdamW(model.parameters()), str(path))
    assert not marker.exists()


@pytest.mark.parametrize("name", ["discriminator_optimizer.pt", "discriminator_scheduler.pt"])
def test_resume_refuses_a_crafted_discriminator_state(tiny_model_dir, tmp_path, name):
    out = tmp_path / "run"
    make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1).train()
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / name).is_file()
    marker = tmp_path / "pwned"
    _crafted(checkpoint / name, marker)
    resumed = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    with pytest.raises(ValueError, match=name):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not marker.exists()


def test_model_instance_without_a_path_and_beta_names_the_two_ways_out(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl import GADTrainer

    model = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)
    model.config._name_or_path = ""  # built in memory: nothing to reload a reference model from
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = Dataset.from_list(tiny_gad_rows(4, seed=0))
    with pytest.raises(ValueError, match=r"beta=0.001.*save_pretrained.*beta=0\.0"):
        GADTrainer(model, args=make_args(tmp_path, beta=1e-3), train_dataset=data, processing_class=tokenizer)
    # beta=0 needs no reference model: the same instance builds.
    trainer = GADTrainer(model, args=make_args(tmp_path, beta=0.0), train_dataset=data, processing_class=tokenizer)
    assert trainer.ref_model is None


def test_an_echoed_api_key_never_reaches_the_errors_files_or_the_console(tmp_path, monkeypatch, caplog):
    """An endpoint that echoes the Authorization header put the key into `*.errors.jsonl`,
    `eval_judge_errors.jsonl` and the console warnings."""
    import json

    from gad_trl.tiny import write_jsonl
    from gad_trl.workflow.evaluation import ERRORS_FILE, EvaluationArguments, evaluate
    from gad_trl.workflow.teacher import TeacherGenerationArguments, generate_teacher
    from tests.helpers.fault_server import FaultServer

    secret = "sk-live-0123456789abcdefSECRET"
    monkeypatch.setenv("ECHO_KEY", secret)
    rows = [{"prompt": [{"role": "user", "content": f"question number {i}"}], "teacher_response": "ok"} for i in range(2)]
    data = write_jsonl(rows, tmp_path / "prompts.jsonl")
    with FaultServer() as server:
        server.plan = {"question number 0": ["echo401"]}
        args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url,
                                          api_key_env="ECHO_KEY", max_retries=0, request_timeout=5.0)
        summary = generate_teacher(args)
        assert summary["failed"] == 1
        assert server.authorizations[0] == f"Bearer {secret}"  # the key was sent, and echoed back
        errors = (tmp_path / "out.jsonl.errors.jsonl").read_text()
        assert "invalid credentials" in errors and secret not in errors and "<redacted>" in errors

        eval_args = EvaluationArguments(dataset_name=data, student_base_url=server.url, student_api_key_env="ECHO_KEY",
                                        judge_base_url=server.url, judge_api_key_env="ECHO_KEY", max_retries=0,
                                        request_timeout=5.0)
        evaluate(eval_args, output_dir=tmp_path / "eval")
    judge_errors = (tmp_path / "eval" / ERRORS_FILE).read_text()
    assert json.loads(judge_errors.splitlines()[0])["error"] and secret not in judge_errors
    assert secret not in caplog.text and "invalid credentials" in caplog.text


@pytest.mark.parametrize("field, value", [
    ("loss_type", "dapoo"), ("importance_sampling_level", "seq"), ("scale_rewards", "grp"), ("vllm_mode", "sever"),
    ("multi_objective_aggregation", "sum"), ("vllm_importance_sampling_mode", "mask"),
    ("discriminator_lr_scheduler_type", "cosinee"),
])
def test_enum_typos_fail_when_the_config_is_built(tmp_path, field, value):
    """A `loss_type` typo was raised only at the first GRPO step, after the warm-ups."""
    with pytest.raises(ValueError, match=rf"{field}='{value}' is not one of .*Fix `{field}`"):
        make_args(tmp_path, **{field: value})


def test_negative_discriminator_learning_rate_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="discriminator_learning_rate must be >= 0"):
        make_args(tmp_path, discriminator_learning_rate=-1e-5)
    assert make_args(tmp_path, scale_rewards=True).scale_rewards == "group"  # TRL's bool spelling still works


def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_first(tmp_path):
    import subprocess
    import sys
    import textwrap

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gad_trl.run_folder import OutputDirLock
        lock = OutputDirLock({str(out)!r}); lock.acquire(); print("locked", flush=True); time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} on .*another output_dir"):
            OutputDirLock(str(out)).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = OutputDirLock(str(out))  # the killed holder's lock is gone with it: never stale
    lock.acquire()
    lock.release()
    assert not (out / ".gad_trl.lock").exists()


def test_train_holds_the_lock_and_a_read_only_output_dir_fails_at_the_start(tiny_model_dir, tmp_path):
    import os

    from gad_trl.run_folder import OutputDirLock

    out = tmp_path / "run"
    trainer = make_trainer(tiny_model_dir, out, max_steps=1)
    seen = []
    trainer.add_callback(type("Probe", (__import__("transformers").TrainerCallback,), {
        "on_step_end": lambda self, *a, **k: seen.append(_locked(OutputDirLock(str(out))))})())
    trainer.train()
    assert seen == [True]  # a second run would have been refused during training
    assert not (out / ".gad_trl.lock").exists()

    a_file = tmp_path / "a_file"  # a folder that cannot be created, whoever runs the test
    a_file.write_text("")
    with pytest.raises(PermissionError, match="not writable"):
        make_trainer(tiny_model_dir, a_file / "run", max_steps=1)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    os.chmod(read_only, 0o500)
    try:
        if not os.access(read_only, os.W_OK):  # (root writes to read-only folders: only the case above applies)
            with pytest.raises(PermissionError, match="not writable"):
                make_trainer(tiny_model_dir, read_only / "run", max_steps=1)
    finally:
        os.chmod(read_only, 0o700)


def _locked(lock) -> bool:
    try:
        lock.acquire()
    except RuntimeError:
        return True
    lock.release()
    return False


def test_resume_checks_the_run_and_a_finished_run_trains_no_more(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    first = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    first.train()
    checkpoint = out / "checkpoint-2"
    disc_before = (checkpoint / "discriminator" / "model.safetensors").read_bytes()
    again = make_trainer(tiny_model_dir, out, max_steps=2, save_strategy="steps", save_steps=1)
    result = again.train(resume_from_checkpoint=True)
    assert result.global_step == 2 and not (out / "checkpoint-3").exists()
    assert (checkpoint / "discriminator" / "model.safetensors").read_bytes() == disc_before
    assert "already at step 2 of max_steps=2" in caplog.text

    other_data = make_trainer(tiny_model_dir, out, rows=tiny_gad_rows(8, seed=5), max_steps=2)
    with pytest.raises(ValueError, match="written by another run .*train_data_digest"):
        other_data.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    other_model = make_trainer(tiny_model_dir, out, max_steps=2)
    other_model.model.config._name_or_path = "someone/another-student"
    with pytest.raises(ValueError, match="written by another run .*model: checkpoint"):
        other_model.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    shorter = make_trainer(tiny_model_dir, out, max_steps=1)  # checkpoint-2 is past this run's end: nothing to train
    assert shorter.train(resume_from_checkpoint=str(checkpoint)).global_step == 2

    caplog.clear()
    make_trainer(tiny_model_dir, out, max_steps=1).train()  # a new run into a folder with another run's checkpoints
    assert "already holds checkpoints of another run (checkpoint-2)" in caplog.text
