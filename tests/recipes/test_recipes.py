"""Every recipe parses into the CLI's dataclasses; the paper recipes carry the paper's settings; the tiny recipes
run end to end on CPU; the accelerate configs load with accelerate's own config classes."""

from pathlib import Path

import pytest

from gad_trl.cli import train as train_cli

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
TRAINING_RECIPES = sorted(RECIPES.rglob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "gad_trl" / "accelerate_configs").glob("*.yaml"))  # package data


def _id(path):
    return str(path.relative_to(RECIPES))


def test_recipe_inventory():
    names = {_id(p) for p in TRAINING_RECIPES}
    assert {"tiny/gad.yaml", "tiny/seqkd.yaml", "Qwen2.5-7B-Instruct/gad/config_lmsys.yaml",
            "Qwen2.5-7B-Instruct/seqkd/config_lmsys.yaml", "Qwen2.5-7B-Instruct/gad/config_lmsys_qlora.yaml",
            "Qwen2.5-1.5B-Instruct/gad/config_lmsys_lora.yaml"} <= names
    assert {p.stem for p in ACCELERATE_CONFIGS} >= {"ddp", "zero3", "fsdp2"}


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=_id)
def test_recipe_parses(recipe):
    # fail_with_unknown_args: a misspelt key in a recipe is an error here.
    script_args, args, model_args = train_cli.parse_args(["--config", str(recipe)])
    expected = {"seqkd": "SeqKDConfig", "soda": "SODAConfig"}.get(script_args.stage, "GADConfig")
    assert type(args).__name__ == expected
    assert model_args.model_name_or_path and script_args.dataset_name and args.output_dir
    assert args.teacher_response_column == "teacher_response"


def test_paper_gad_recipe_matches_the_paper():
    script_args, args, model_args = train_cli.parse_args(
        ["--config", str(RECIPES / "Qwen2.5-7B-Instruct" / "gad" / "config_lmsys.yaml")]
    )
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-7B-Instruct" and script_args.stage == "gad"
    assert args.learning_rate == 1e-6 and args.discriminator_learning_rate == 1e-6
    assert args.num_generations == 8 and args.temperature == 0.8
    assert args.max_grad_norm == 0.2 and args.discriminator_max_grad_norm == 0.2
    assert args.max_completion_length == 1536 and script_args.max_prompt_length == 2048
    assert args.beta == 1e-3  # TRL's KL term is the k3 (low-variance) estimator
    assert args.critic_warmup_steps == 10 and args.sft_warmup_steps > 0 and args.num_train_epochs == 3
    assert args.discriminator_loss_type == "bradley_terry"
    assert args.use_vllm and args.vllm_mode == "server"
    world_size = 8  # the recipe's accelerate configs use 8 training processes
    completions_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    assert completions_per_step // args.num_generations == 256  # prompts per optimizer step
    assert args.steps_per_generation == args.gradient_accumulation_steps and args.num_iterations == 1
    # memory: the discriminator's forward/backward is chunked, and it is sharded (float32 master weights, loaded bf16)
    assert args.discriminator_mini_batch_size == 8 and args.discriminator_gradient_checkpointing
    assert args.discriminator_sharding == "fsdp2"
    assert args.discriminator_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "sdpa"}


def test_paper_seqkd_recipe_matches_the_paper():
    script_args, args, model_args = train_cli.parse_args(
        ["--config", str(RECIPES / "Qwen2.5-7B-Instruct" / "seqkd" / "config_lmsys.yaml")]
    )
    assert script_args.stage == "seqkd" and args.learning_rate == 5e-6 and args.max_grad_norm == 0.2
    assert args.max_length == 2048 + 1536 and args.completion_only_loss
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 8 == 256


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cluster = load_config_from_file(str(config))
    expected = {"ddp": DistributedType.MULTI_GPU, "zero2": DistributedType.DEEPSPEED, "zero3": DistributedType.DEEPSPEED,
                "fsdp2": DistributedType.FSDP}
    assert cluster.distributed_type == expected[config.stem]
    assert cluster.num_processes == 8 and cluster.mixed_precision == "bf16"
    if config.stem == "zero3":
        assert cluster.deepspeed_config["zero_stage"] == 3 and cluster.deepspeed_config["zero3_save_16bit_model"]
    if config.stem == "zero2":
        assert cluster.deepspeed_config["zero_stage"] == 2
    if config.stem == "fsdp2":
        assert cluster.fsdp_config["fsdp_version"] == 2
        assert cluster.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # The CLI resolves the config by name too (`--accelerate_config zero3`).
    assert Path(train_cli.resolve_accelerate_config(config.stem)) == config


@pytest.mark.parametrize("stage", ["gad", "seqkd", "soda"])
def test_tiny_recipe_runs_end_to_end(stage, tmp_path, monkeypatch):
    """The README's tiny command, as written (relative paths under the working directory), 4 steps."""
    import gad_trl.cli.main as cli_main

    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["make-tiny", "outputs/tiny", "--num_train", "16", "--num_test", "4"]) == 0
    recipe = str(RECIPES / "tiny" / f"{stage}.yaml")
    assert cli_main.main([stage, "--config", recipe, "--max_steps", "4", "--disable_tqdm", "true"]) == 0
    out = tmp_path / "outputs" / f"tiny-{stage}"
    assert (out / "model.safetensors").exists()
    assert (out / "discriminator" / "model.safetensors").exists() == (stage == "gad")
    assert list((out / "runs").rglob("events.out.tfevents*"))  # report_to: tensorboard


def test_documented_vllm_serve_commands_parse():
    """The `gad-trl vllm-serve` lines in the recipes' comments use flags the server really has."""
    import shlex

    serve = pytest.importorskip("gad_trl.vllm.serve")
    lines = [line.split("gad-trl vllm-serve", 1)[1] for p in [*TRAINING_RECIPES, RECIPES / "README.md"]
             for line in p.read_text().splitlines() if "gad-trl vllm-serve --" in line]
    assert lines
    for rest in lines:
        args = serve.build_parser().parse_args(shlex.split(rest))  # exits (SystemExit) on an unknown flag
        assert args.model


# Single-GPU PEFT recipes and their modes; each runs one GAD step on the tiny model on CPU, in its mode.
PEFT_RECIPES = {
    "Qwen2.5-7B-Instruct/gad/config_lmsys_qlora.yaml": "qlora_shared_base",
    "Qwen2.5-1.5B-Instruct/gad/config_lmsys_lora.yaml": "lora_student_lora_discriminator",
}


@pytest.mark.parametrize("recipe", sorted(PEFT_RECIPES))
def test_single_gpu_peft_recipe_runs_its_mode_on_the_tiny_model(recipe, tmp_path, monkeypatch):
    import gad_trl.cli.main as cli_main
    from gad_trl.discriminator.adapters import SharedBaseDiscriminator, is_quantized

    if PEFT_RECIPES[recipe] == "qlora_shared_base":
        pytest.importorskip("bitsandbytes")  # in the `dev` and `quantization` extras
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["make-tiny", "tiny", "--num_train", "8", "--num_test", "2"]) == 0
    argv = ["--config", str(RECIPES / recipe)]
    script_args, args, model_args = train_cli.parse_args(argv)
    assert model_args.use_peft and args.per_device_train_batch_size * args.gradient_accumulation_steps >= 128
    assert args.learning_rate == args.discriminator_learning_rate
    if PEFT_RECIPES[recipe] == "qlora_shared_base":
        assert model_args.load_in_4bit and args.discriminator_shared_base and not args.discriminator_use_peft
        # generation: a vLLM server on the same GPU receiving only the student's adapter (4-bit base: no merge)
        assert args.use_vllm and args.vllm_mode == "server" and args.vllm_weight_sync == "lora"
        serve_line = next(line for line in (RECIPES / recipe).read_text().splitlines() if "vllm-serve --" in line)
        assert "--weight-sync lora" in serve_line and f"--max-lora-rank {model_args.lora_r}" in serve_line
    else:
        assert not args.use_vllm
    if PEFT_RECIPES[recipe] != "qlora_shared_base":
        assert args.discriminator_use_peft and not model_args.load_in_4bit and not args.discriminator_shared_base
    # The recipe's mode on the tiny model: only sizes, devices and the schedule are overridden (and generation goes
    # through transformers: tests/vllm/test_lora_sync.py runs the adapter-only sync on a real server).
    overrides = ["--use_vllm", "false", "--model_name_or_path", "tiny/model", "--dataset_name", "tiny/data", "--output_dir", "out",
                 "--max_steps", "1", "--critic_warmup_steps", "0", "--sft_warmup_steps", "0", "--use_cpu", "true",
                 "--bf16", "false", "--dtype", "float32", "--per_device_train_batch_size", "4",
                 "--gradient_accumulation_steps", "1", "--num_generations", "4", "--max_completion_length", "8",
                 "--discriminator_mini_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
                 "--report_to", "none", "--log_completions", "false", "--disable_tqdm", "true",
                 "--discriminator_init_kwargs", '{"dtype": "float32"}']
    trainer = train_cli.main(*train_cli.parse_args(argv + overrides))
    assert trainer.state.global_step == 1 and trainer.current_phase() == "gad"
    if PEFT_RECIPES[recipe] == "qlora_shared_base":
        assert isinstance(trainer.discriminator, SharedBaseDiscriminator) and is_quantized(trainer.model)
    else:
        assert not is_quantized(trainer.model) and not is_quantized(trainer.discriminator)
        assert trainer.discriminator.peft_config["default"].task_type == "SEQ_CLS"
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()  # the student's adapter
    assert (tmp_path / "out" / "discriminator" / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "discriminator_merged" / "model.safetensors").exists()
