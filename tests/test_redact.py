"""`gad_trl.redact`: secrets (API keys, passwords in URLs) never reach cards, hyperparameters, event files, error files, logs or the console."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from gad_trl.redact import REDACTED, public_dataset_name, redact
from tests.helpers.gad_helpers import make_trainer
from tests.vllm.test_generation import needs_vllm

SECRET = "hf_abcdefghijklmnopqrstuvwxyz0123"


PASSWORD = "s3cr3t-pw"


# ------------------------------------------------------------------------------------------ secrets in errors and logs
KEY = "sk-proj-Q7abcdefGHIJ1234567890xyzKLMN"  # what a user pastes into --api_key_env by mistake


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


def test_a_key_given_as_api_key_env_is_refused_without_echoing_it(tmp_path, caplog, capsys):
    from gad_trl.config import SODAConfig
    from gad_trl.workflow.evaluation import EvaluationArguments
    from gad_trl.workflow.openai_chat import make_client
    from gad_trl.workflow.teacher import TeacherGenerationArguments

    builders = [
        lambda: TeacherGenerationArguments(dataset_name="d.jsonl", output=str(tmp_path / "o.jsonl"), api_key_env=KEY),
        lambda: EvaluationArguments(dataset_name="d.jsonl", judge_api_key_env=KEY),
        lambda: SODAConfig(output_dir=str(tmp_path), rejected_base_url="http://127.0.0.1:9/v1",
                           rejected_api_key_env=KEY, report_to="none"),
        lambda: make_client("http://127.0.0.1:9/v1", KEY),
    ]
    with caplog.at_level(logging.DEBUG):
        for build in builders:
            with pytest.raises(ValueError, match="NAME of the environment variable.*looks like an API key") as info:
                build()
            assert KEY not in str(info.value)
    assert KEY not in caplog.text and KEY not in "".join(capsys.readouterr())
    with pytest.raises(ValueError, match="not an environment variable name"):
        make_client("http://127.0.0.1:9/v1", "MY KEY")
    make_client("http://127.0.0.1:9/v1", "GAD_TRL_TEST_UNSET_KEY")  # a variable name: fine (unset: no key sent)


@needs_vllm
@pytest.mark.parametrize("weight_sync", ["reload", "nccl"])
def test_a_password_in_the_server_url_is_not_printed_when_no_server_answers(tiny_model_dir, tmp_path, weight_sync):
    import socket
    import traceback

    from datasets import Dataset

    from gad_trl import GADConfig, GADTrainer
    from gad_trl.tiny import tiny_gad_rows
    from gad_trl.vllm import VLLMServerError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = GADConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=8, use_vllm=True, vllm_mode="server", vllm_weight_sync=weight_sync,
        vllm_server_base_url=f"http://trainer:hunter2secret@127.0.0.1:{port}", vllm_server_timeout=1,
    )  # fmt: skip
    with pytest.raises(VLLMServerError) as info:
        GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    printed = "".join(traceback.format_exception(info.value))  # ours and TRL's error it wraps
    assert "hunter2secret" not in printed
    assert f"http://trainer:<redacted>@127.0.0.1:{port}" in str(info.value)
    assert "can't be reached at http://trainer:<redacted>@" in printed  # TRL's message, kept, redacted

