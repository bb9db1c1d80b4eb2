"""Reliability round 3: no checkpoint file is unpickled as code; a reference model the student cannot be reloaded
for is a clear error."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from gad_trl.testing import tiny_gad_rows
from tests.gad_helpers import make_args, make_trainer


class _RunsCodeWhenUnpickled:
    """Unpickling calls `open(marker, "w")`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker):
    torch.save({"state": {}, "param_groups": [{"params": ["x"]}], "payload": _RunsCodeWhenUnpickled(marker)}, path)


def test_load_checkpoint_file_refuses_pickled_code_and_names_the_file(tmp_path):
    from gad_trl.resume import load_checkpoint_file

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
    make_trainer(tiny_model_dir, out, max_steps=1, save_strategy="steps", save_steps=1).train()
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

    from gad_trl.testing import write_jsonl
    from gad_trl.workflow.evaluation import ERRORS_FILE, EvaluationArguments, evaluate
    from gad_trl.workflow.teacher import TeacherGenerationArguments, generate_teacher
    from tests.fault_server import FaultServer

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
