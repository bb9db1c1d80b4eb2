"""The training commands (`gad_trl.cli.gad`, `.seqkd`, `.train`, `.launch`): TrlParser/YAML parsing, stages,
accelerate launch and end-to-end runs of both trainers on the tiny model (offline, CPU)."""

import math
from pathlib import Path

import pytest
import torch

import gad_trl.cli.main as cli_main
from gad_trl.cli import train as train_cli
from gad_trl.cli.utils import load_any_dataset
from tests.helpers.gad_helpers import REPO, TINY_GAD, TINY_SEQKD


def test_flags_override_yaml_and_yaml_overrides_defaults():
    script_args, args, model_args = train_cli.parse_args(
        ["--config", TINY_GAD, "--learning_rate", "0.5", "--critic_warmup_steps", "7"]
    )
    assert type(args).__name__ == "GADConfig" and script_args.stage == "gad"
    assert args.learning_rate == 0.5 and args.critic_warmup_steps == 7  # flags
    assert args.num_generations == 4 and args.max_completion_length == 16  # YAML
    assert args.discriminator_loss_type == "bradley_terry" and model_args.model_name_or_path == "outputs/tiny/model"


def test_stage_picks_the_config_class(tmp_path):
    _, args, _ = train_cli.parse_args(["--config", TINY_SEQKD])
    assert type(args).__name__ == "SeqKDConfig" and args.teacher_response_column == "teacher_response"
    assert train_cli.peek_stage(["--config", TINY_SEQKD]) == "seqkd"
    assert train_cli.peek_stage(["--config", TINY_SEQKD, "--stage", "gad"]) == "gad"  # flag wins
    assert train_cli.peek_stage(["--stage=seqkd"]) == "seqkd"
    assert train_cli.peek_stage([]) == "gad"
    with pytest.raises(ValueError, match="Unknown stage"):
        train_cli.peek_stage(["--stage", "ppo"])


def test_unknown_yaml_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY_GAD).read_text() + "\nnum_generationz: 3\n")
    with pytest.raises(ValueError, match="num_generationz"):
        train_cli.parse_args(["--config", str(bad)])


def test_seqkd_rejects_gad_only_fields(tmp_path):
    """A GAD field in a SeqKD YAML is an error, not silently ignored."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY_SEQKD).read_text() + "\ncritic_warmup_steps: 3\n")
    with pytest.raises(ValueError, match="critic_warmup_steps"):
        train_cli.parse_args(["--config", str(bad)])


def test_accelerate_config_name_relaunches_through_accelerate():
    argv = ["--config", TINY_GAD, "--accelerate_config", "zero3", "--num_processes", "2", "--max_steps", "3"]
    launch_args, training_args = train_cli.split_launch_args(argv)
    assert launch_args[:2] == ["--config_file", str(REPO / "gad_trl" / "accelerate_configs" / "zero3.yaml")]
    assert launch_args[2:] == ["--num_processes", "2"]
    assert training_args == ["--config", TINY_GAD, "--max_steps", "3"]

    launched = []
    assert train_cli.launch(argv, launch_command_fn=launched.append) == 0
    ns = launched[0]
    assert ns.config_file.endswith("zero3.yaml") and ns.num_processes == 2
    assert ns.module and ns.training_script == "gad_trl.cli.train"
    assert ns.training_script_args == training_args


def test_misspelt_flag_is_reported_not_launched(monkeypatch):
    launched = []
    monkeypatch.setattr(train_cli, "launch", lambda argv, **kw: launched.append(argv) or 0)
    with pytest.raises(ValueError, match=r"--num_generationz"):
        train_cli.run(["--config", TINY_GAD, "--num_generationz", "3"])
    assert not launched
    assert train_cli.run(["--config", TINY_GAD, "--num_processes", "2"]) == 0  # a real accelerate option
    assert launched == [["--config", TINY_GAD, "--num_processes", "2"]]


def test_plain_command_line_has_no_launch_args():
    assert train_cli.split_launch_args(["--config", TINY_GAD, "--max_steps", "2"]) == (
        [],
        ["--config", TINY_GAD, "--max_steps", "2"],
    )
    with pytest.raises(ValueError, match="neither a file nor"):
        train_cli.resolve_accelerate_config("no-such-config")


def test_train_seqkd_end_to_end(tiny_model_dir, tiny_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "seqkd"
    argv = ["--config", TINY_SEQKD, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", str(out), "--max_steps", "3", "--report_to", "none", "--disable_tqdm", "true",
            "--logging_steps", "1"]
    trainer = train_cli.main(*train_cli.parse_args(argv))
    assert type(trainer).__name__ == "SFTTrainer"
    # SFT saw prompt-completion rows: the prompt is masked out of the labels, the teacher response is learnt.
    row, source = trainer.train_dataset[0], load_any_dataset(tiny_data_dir)["train"][0]
    learnt = [t for t in row["labels"] if t != -100]
    assert 0 < len(learnt) < len(row["input_ids"])
    assert trainer.processing_class.decode(learnt).startswith(source["teacher_response"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_gad_end_to_end_through_the_console_entry(tiny_model_dir, tiny_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "gad"
    argv = ["train", "--config", TINY_GAD, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", str(out), "--max_steps", "3", "--critic_warmup_steps", "1", "--sft_warmup_steps", "1",
            "--report_to", "none", "--disable_tqdm", "true"]
    assert cli_main.main(argv) == 0
    student = AutoModelForCausalLM.from_pretrained(out)
    disc = AutoModelForSequenceClassification.from_pretrained(out / "discriminator", num_labels=1)
    assert disc.config.num_labels == 1 and student.config.vocab_size == disc.config.vocab_size
    card = (out / "discriminator" / "README.md").read_text()
    # The CLI passes the data set to the card, by name only: no absolute local path is published (issue 11).
    assert "2511.10643" in card and f"`.../{Path(tiny_data_dir).name}`" in card and tiny_data_dir not in card


def test_each_trainer_command_parses_its_recipe_and_refuses_the_other_stage():
    from gad_trl.cli import gad, seqkd

    script_args, args, _ = gad.make_parser().parse_args_and_config(["--config", TINY_GAD])
    assert type(args).__name__ == "GADConfig" and script_args.stage == "gad"
    _, args, _ = seqkd.make_parser().parse_args_and_config(["--config", TINY_SEQKD])
    assert type(args).__name__ == "SeqKDConfig"
    with pytest.raises(ValueError, match="run it with `gad-trl seqkd`"):
        gad.build_trainer(*train_cli.parse_args(["--config", TINY_SEQKD]))
    with pytest.raises(ValueError, match="run it with `gad-trl gad`"):
        seqkd.build_trainer(*train_cli.parse_args(["--config", TINY_GAD]))


@pytest.mark.parametrize("command", ["gad", "seqkd"])
def test_trainer_commands_relaunch_their_own_module(command):
    import importlib

    from gad_trl.cli import launch

    module = importlib.import_module(f"gad_trl.cli.{command}")
    recipe = TINY_GAD if command == "gad" else TINY_SEQKD
    launched = []
    argv = ["--config", recipe, "--accelerate_config", "ddp", "--num_processes", "2"]
    assert launch.launch(argv, module.make_parser(), module.MODULE, launch_command_fn=launched.append) == 0
    assert launched[0].training_script == f"gad_trl.cli.{command}" and launched[0].num_processes == 2
    assert launched[0].config_file.endswith("ddp.yaml") and launched[0].training_script_args == ["--config", recipe]


def test_gad_command_adds_reward_funcs_next_to_the_discriminator(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """`--reward_funcs` takes trl.rewards names and dotted import paths (from the working directory), as `trl grpo`;
    each becomes a reward column after the discriminator's, weighted by reward_weights."""
    from gad_trl.cli import gad

    (tmp_path / "gad_test_rewards.py").write_text(
        "def length_reward(completions, **kwargs):\n"
        "    return [float(len(c[0]['content'])) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    common = ["--config", TINY_GAD, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
              "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--critic_warmup_steps", "0", "--report_to", "none",
              "--disable_tqdm", "true"]
    trainer = gad.build_trainer(*train_cli.parse_args(
        common + ["--reward_funcs", "gad_test_rewards.length_reward", "think_format_reward",
                  "--reward_weights", "1.0", "0.01", "0.5"]
    ))
    assert trainer.reward_func_names == ["discriminator", "length_reward", "think_format_reward"]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["rewards/length_reward/mean"] > 0 and "rewards/think_format_reward/mean" in logged
    assert "rewards/discriminator/mean" in logged

    for bad, message in (("no_such_reward", "Unknown reward function 'no_such_reward'"),
                         ("missing_module.fn", "cannot import module 'missing_module'"),
                         ("gad_test_rewards.nothing", "has no attribute 'nothing'")):
        with pytest.raises(ValueError, match=message):
            gad.build_trainer(*train_cli.parse_args(common + ["--reward_funcs", bad]))


def test_seqkd_command_refuses_rewards():
    from gad_trl.cli import seqkd

    with pytest.raises(ValueError, match="SeqKD trains on the teacher text without rewards"):
        seqkd.build_trainer(*train_cli.parse_args(["--config", TINY_SEQKD, "--reward_funcs", "think_format_reward"]))
