"""`gad-trl estimate-memory` (`gad_trl.cli.estimate_memory`): runs on a tiny local model and on recipes; clear errors."""

import json

import gad_trl.cli.main as cli_main
from gad_trl.memory import MODES

from tests.gad_helpers import REPO, TINY_GAD

RECIPE_7B = str(REPO / "recipes" / "Qwen2.5-7B-Instruct" / "gad" / "config_lmsys.yaml")


def run(argv: list[str]) -> int:
    return cli_main.main(["estimate-memory", *argv])


def test_cli_on_tiny_model_and_recipe(tiny_model_dir, capsys, tmp_path):
    out_json = tmp_path / "est.json"
    code = run(["--config", TINY_GAD, "--model_name_or_path", tiny_model_dir, "--num_gpus", "2",
                "--gpu_memory_gb", "24", "--output_json", str(out_json)])
    text = capsys.readouterr().out
    assert code == 0
    for mode in MODES:
        assert f"[{mode}]" in text
    assert "peak per GPU" in text and "Assumptions:" in text
    assert "student 8 x 528 tokens" in text  # recipe: 8 per device; 512 default prompt + 16 completion
    data = json.loads(out_json.read_text())
    assert data["setups"][0]["settings"]["max_completion_length"] == 16

    code = run(["--config", RECIPE_7B, "--setups", "1x24", "8x80", "--report_format", "markdown"])
    table = capsys.readouterr().out
    assert code == 0
    assert table.splitlines()[0] == "| mode | 1x24 GB | 8x80 GB |"
    assert "| sharded | n/a (1 GPU) |" in table


def test_cli_errors(tiny_model_dir, capsys):
    assert run(["--model_name_or_path", tiny_model_dir, "--modes", "replicated", "bogus"]) == 2
    assert "Unknown mode(s) bogus" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--num_gpus", "0"]) == 2
    assert "num_gpus must be >= 1" in capsys.readouterr().err
    assert run(["--model_name_or_path", "outputs/does/not/exist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--setups", "8by80"]) == 2
    assert "is not `<num_gpus>x<GB>`" in capsys.readouterr().err
