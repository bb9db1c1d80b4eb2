"""`gad-trl` dispatch (`gad_trl.cli.main`): commands, the console entry, vllm-serve delegation, make-tiny."""

import sys
import types

import pytest

import gad_trl.cli.main as cli_main
from gad_trl.cli.utils import load_any_dataset
from tests.helpers.gad_helpers import REPO


def test_help_lists_every_command(capsys):
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "analyze-lengths", "eval-discriminator", "make-tiny", "vllm-serve"):
        assert command in out


@pytest.mark.parametrize("command", [[], ["gad"]], ids=["gad-trl", "gad-trl gad"])
def test_help_writes_nothing_to_stderr(command):
    """`gad-trl gad --help` imports TRL, hence peft and bitsandbytes, whose CPU backend warns that the optional `kernels`
    package is missing (on AVX512-BF16 CPUs): a harmless fallback that must not greet every CLI start."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gad_trl.cli.main", *command, "--help"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "usage" in proc.stdout
    assert proc.stderr == ""


def test_only_the_missing_kernels_fallback_is_silenced():
    import logging

    cli_main.quiet_harmless_import_warnings()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    message = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ..."
    missing = ModuleNotFoundError("No module named 'kernels'", name="kernels")
    broken = RuntimeError("kernel version mismatch")
    assert not logger.filter(logger.makeRecord(logger.name, logging.WARNING, "ops.py", 1, message, (missing,), None))
    assert logger.filter(logger.makeRecord(logger.name, logging.WARNING, "ops.py", 1, message, (broken,), None))
    assert logger.filter(logger.makeRecord(logger.name, logging.WARNING, "ops.py", 1, "another warning", (), None))


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as err:
        cli_main.main(["distill-everything"])
    assert err.value.code != 0


def test_console_script_is_declared():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gad-trl"] == "gad_trl.cli.main:main"


def test_vllm_serve_delegates_to_gad_trl_vllm(monkeypatch):
    seen = []
    fake = types.ModuleType("gad_trl.vllm")
    fake.serve_main = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, "gad_trl.vllm", fake)
    assert cli_main.main(["vllm-serve", "--model", "m", "--port", "8123"]) == 0
    assert seen == [["--model", "m", "--port", "8123"]]


def test_vllm_serve_without_server_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gad_trl.vllm", types.ModuleType("gad_trl.vllm"))  # no serve_main
    assert cli_main.main(["vllm-serve", "--model", "m"]) == 2
    assert "vllm-serve" in capsys.readouterr().err


def test_vllm_serve_reaches_the_real_server_entry(tiny_model_dir, capsys):
    """Unmocked: `gad-trl vllm-serve ... --dry-run` goes through gad_trl.vllm.serve_main and prints the vLLM command."""
    pytest.importorskip("gad_trl.vllm.serve")
    assert cli_main.main(["vllm-serve", "--model", tiny_model_dir, "--weight-sync", "reload", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and tiny_model_dir in out


def test_make_tiny_writes_a_loadable_model_and_data(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli_main.main(["make-tiny", str(tmp_path / "tiny"), "--num_train", "5", "--num_test", "3"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny" / "model")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.chat_template
    data = load_any_dataset(str(tmp_path / "tiny" / "data"))
    assert len(data["train"]) == 5 and len(data["test"]) == 3
    assert set(data["train"].column_names) == {"prompt", "teacher_response"}
