"""`gad-trl estimate-memory` (`gad_trl.cli.estimate_memory`): runs on a tiny local model and on recipes; clear errors."""

import json

import gad_trl.cli.main as cli_main
from gad_trl.memory.estimator import MODES

from tests.helpers.gad_helpers import REPO, TINY_GAD

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
    assert "student 16 x 528 tokens" in text  # recipe: 16 per device; 512 default prompt + 16 completion
    data = json.loads(out_json.read_text())
    assert data["setups"][0]["settings"]["max_completion_length"] == 16

    code = run(["--config", RECIPE_7B, "--setups", "1x24", "8x80", "--report_format", "markdown"])
    table = capsys.readouterr().out
    assert code == 0
    assert table.splitlines()[0] == "| mode | 1x24 GB | 8x80 GB |"
    assert "| sharded (this run) | n/a (1 GPU) |" in table  # the recipe's mode is marked


def test_cli_reports_the_7b_recipe_in_its_sharded_mode(capsys, tmp_path):
    # discriminator_sharding: fsdp2, launched (per its header) with --accelerate_config zero3: `sharded`.
    out_json = tmp_path / "est.json"
    code = run(["--config", RECIPE_7B, "--num_gpus", "8", "--modes", "sharded_student", "sharded",
                "--output_json", str(out_json)])
    text = capsys.readouterr().out
    assert code == 0
    marked = [line for line in text.splitlines() if "this run's mode" in line]
    assert len(marked) == 1
    assert text.index("this run's mode") > text.index("[sharded] ") > text.index("[sharded_student]")
    assert "discriminator_sharding: fsdp2" in marked[0]
    assert json.loads(out_json.read_text())["run_mode"]["mode"] == "sharded"

    # The launcher, given as `gad-trl gad` takes it, decides `auto` / `none` and the GPU count.
    code = run(["--config", RECIPE_7B, "--accelerate_config", "zero3", "--discriminator_sharding", "none",
                "--report_format", "json", "--modes", "replicated"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["run_mode"]["mode"] == "sharded_student" and "ZeRO-3, 8 processes" in data["run_mode"]["reason"]
    assert data["setups"][0]["num_gpus"] == 8  # zero3.yaml's num_processes

    # ... or in the recipe itself, where `gad-trl gad` reads them too.
    recipe = tmp_path / "recipe.yaml"
    text = open(RECIPE_7B).read().replace("discriminator_sharding: fsdp2", "discriminator_sharding: auto")
    recipe.write_text(text + "\naccelerate_config: fsdp2\nnum_processes: 4\n")
    assert run(["--config", str(recipe), "--report_format", "json", "--modes", "replicated"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_mode"]["mode"] == "sharded" and data["setups"][0]["num_gpus"] == 4


def test_cli_errors(tiny_model_dir, capsys):
    assert run(["--model_name_or_path", tiny_model_dir, "--modes", "replicated", "bogus"]) == 2
    assert "Unknown mode(s) bogus" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--num_gpus", "0"]) == 2
    assert "num_gpus must be >= 1" in capsys.readouterr().err
    assert run(["--model_name_or_path", "outputs/does/not/exist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--setups", "8by80"]) == 2
    assert "is not `<num_gpus>x<GB>`" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--accelerate_config", "zero9"]) == 2
    assert "Accelerate config 'zero9' is neither a file" in capsys.readouterr().err
    assert run(["--model_name_or_path", tiny_model_dir, "--bogus_flag", "8"]) == 2
    assert "Unknown arguments ['--bogus_flag']" in capsys.readouterr().err
    assert run(["--config", str(REPO / "recipes" / "tiny" / "seqkd.yaml")]) == 2
    assert "stage: seqkd trains no discriminator" in capsys.readouterr().err


def test_cli_counts_the_discriminator_adapter_from_its_own_fields(capsys):
    # The 1.5B LoRA recipe (its mode, and every other recipe's, is checked in tests/memory/test_recipe.py), with the
    # discriminator's adapter made smaller than the student's through discriminator_lora_*.
    lora = str(REPO / "recipes" / "Qwen2.5-1.5B-Instruct" / "gad" / "config_lmsys_lora.yaml")
    assert run(["--config", lora, "--report_format", "json", "--modes", "lora", "--discriminator_lora_r", "8",
                "--discriminator_lora_target_modules", "q_proj", "v_proj"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_mode"]["mode"] == "lora"
    student, disc = data["student"], data["discriminator"]
    assert disc["lora_target_modules"] == ["q_proj", "v_proj"] and student["lora_target_modules"] != ["q_proj", "v_proj"]
    assert 0 < disc["lora_params"] < student["lora_params"] / 4  # r 8 on two projections vs r 32 on all linears
    est = data["setups"][0]["estimates"]["lora"]["discriminator"]
    assert est["gradients"] == 4 * (disc["lora_params"] + disc["value_head_params"])  # float32 adapter + head
