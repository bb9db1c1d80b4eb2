"""`gad-trl estimate-memory`: per-GPU memory of student, reference and discriminator for each training mode.

Reads only the model's config (a local directory or a Hub id; no weights) and the run's settings, which come from a
recipe (`--config recipe.yaml`) and/or the same flags `gad-trl gad` takes; the logic lives in `gad_trl.memory.estimator`.

    gad-trl estimate-memory --config recipes/Qwen2.5-7B-Instruct/gad/config_lmsys.yaml --num_gpus 8 --gpu_memory_gb 80
    gad-trl estimate-memory --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --per_device_train_batch_size 8 \
        --max_completion_length 512 --prompt_length 512 --gradient_checkpointing --modes qlora shared_base_qlora
    gad-trl estimate-memory --config recipe.yaml --setups 1x24 1x80 8x80 --report_format markdown   # README table

The mode the run trains in (from `discriminator_sharding` and the launch: `accelerate_config` / `num_processes` in
the recipe or on the command line, as `gad-trl gad` takes them; from `use_peft` / `load_in_4bit` and the PEFT
discriminator's `discriminator_use_peft` / `discriminator_load_in_4bit` / `discriminator_shared_base`) is marked in
every report (`gad_trl.memory.recipe`). The discriminator's LoRA adapter is counted from `discriminator_lora_*`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser

from ..config import GADConfig, GADScriptArguments
from ..memory.estimator import GiB, MODES, MemoryEstimateError, RunSettings, count_model, estimate_modes, format_report

SETUP_PATTERN = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)$")


@dataclass
class EstimateMemoryArguments:
    num_gpus: int | None = field(
        default=None,
        metadata={
            "help": "Training GPUs (the vLLM server's GPUs are not counted). Default: the launch's `num_processes` "
            "(`--accelerate_config` / `--num_processes`, in the recipe or on the command line), else 1."
        },
    )
    modes: list[str] = field(
        default_factory=lambda: list(MODES),
        metadata={"help": "Modes to estimate: " + "; ".join(f"`{k}`: {v}" for k, v in MODES.items()) + "."},
    )
    gpu_memory_gb: float | None = field(
        default=None, metadata={"help": "Memory of one GPU in GB: the report says whether each mode fits (10%% headroom)."}
    )
    setups: list[str] | None = field(
        default=None,
        metadata={
            "help": "Several `<num_gpus>x<GB>` setups at once, e.g. `1x24 1x80 8x80`: one column each (overrides "
            "num_gpus and gpu_memory_gb)."
        },
    )
    prompt_length: int | None = field(
        default=None,
        metadata={"help": "Prompt tokens per sequence; default `max_prompt_length` of the recipe, else 512."},
    )
    report_format: str = field(
        default="text", metadata={"help": "`text` (breakdown + assumptions), `markdown` (table) or `json`.",
                                  "choices": ["text", "markdown", "json"]}
    )
    output_json: str | None = field(default=None, metadata={"help": "Also write the estimates to this JSON file."})


def parse_setups(setups: list[str]) -> list[tuple[int, float]]:
    out = []
    for item in setups:
        match = SETUP_PATTERN.match(item.strip())
        if not match:
            raise MemoryEstimateError(f"Setup {item!r} is not `<num_gpus>x<GB>` (e.g. 8x80).")
        out.append((int(match.group(1)), float(match.group(2))))
    return out


def _explicit_bf16(argv: list[str]) -> bool | None:
    """bf16 as the user wrote it (flag or YAML), or None: on a machine without a GPU GADConfig turns an unset bf16 off,
    but the estimate is for the GPUs the recipe will run on."""
    for i, arg in enumerate(argv):
        if arg == "--bf16":
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            return nxt.lower() not in ("false", "0", "no") if nxt and not nxt.startswith("--") else True
        if arg.startswith("--bf16="):
            return arg.split("=", 1)[1].lower() not in ("false", "0", "no")
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        import yaml

        with open(argv[argv.index("--config") + 1]) as f:
            config = yaml.safe_load(f) or {}
        if isinstance(config, dict) and config.get("bf16") is not None:
            return bool(config["bf16"])
    return None


def _dtype_name(value, config) -> str:
    import torch

    if value in (None, "auto"):
        value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    return str(value)


def settings_from_args(
    script_args, training_args, model_args, args, student_config, num_gpus: int, bf16: bool | None = None
) -> RunSettings:
    """RunSettings from the recipe's parsed arguments, resolved as the trainer resolves them."""
    init_kwargs = dict(training_args.model_init_kwargs or {})
    student_dtype = _dtype_name(init_kwargs.get("dtype", model_args.dtype), student_config)
    disc_kwargs = training_args.discriminator_init_kwargs
    # load_discriminator: discriminator_init_kwargs, else the student's init kwargs; float32 when they name no dtype.
    if disc_kwargs is None:
        disc_dtype = student_dtype
    else:
        disc_dtype = _dtype_name(disc_kwargs.get("dtype", "float32"), student_config)
    prompt_length = args.prompt_length or script_args.max_prompt_length or 512
    if bf16 is None:
        bf16 = not training_args.use_cpu and not training_args.fp16
    return RunSettings(
        num_gpus=num_gpus,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        steps_per_generation=training_args.steps_per_generation or training_args.gradient_accumulation_steps,
        num_generations=training_args.num_generations,
        prompt_length=prompt_length,
        max_completion_length=training_args.max_completion_length,
        gradient_checkpointing=bool(training_args.gradient_checkpointing),
        discriminator_gradient_checkpointing=training_args.discriminator_gradient_checkpointing,
        discriminator_mini_batch_size=training_args.discriminator_mini_batch_size,
        beta=training_args.beta,
        sft_loss_coef=training_args.sft_loss_coef,
        student_dtype=student_dtype,
        discriminator_dtype=disc_dtype,
        bf16=bf16,
        use_vllm=bool(training_args.use_vllm),
        async_generation=bool(getattr(training_args, "async_generation", False)),
        use_bnb_nested_quant=model_args.use_bnb_nested_quant,
        lora_dropout=model_args.lora_dropout,
        discriminator_lora_dropout=training_args.discriminator_lora_dropout,
        optim=getattr(training_args.optim, "value", str(training_args.optim)),  # OptimizerNames is an enum
    )


def format_markdown(
    estimates_by_setup: dict[tuple[int, float | None], dict], modes: list[str], run_mode: str | None = None
) -> str:
    """One row per mode, one column per `<num_gpus> x <GB>` setup: peak GiB per GPU and whether it fits (10% headroom);
    `run_mode`'s row is marked "(this run)"."""
    setups = list(estimates_by_setup)
    header = "| mode | " + " | ".join(f"{n}x{gb:g} GB" if gb else f"{n} GPU(s)" for n, gb in setups) + " |"
    lines = [header, "|" + "---|" * (len(setups) + 1)]
    for mode in modes:
        cells = []
        for setup in setups:
            est = estimates_by_setup[setup][mode]
            if isinstance(est, str):
                cells.append(f"n/a ({est})")
                continue
            verdict = "" if not setup[1] else (" fits" if est.peak <= setup[1] * 1e9 * 0.9 else " **no**")
            cells.append(f"{est.peak / GiB:.1f} GiB{verdict}")
        label = f"{mode} (this run)" if mode == run_mode else mode
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(
        (EstimateMemoryArguments, GADScriptArguments, GADConfig, ModelConfig), prog=prog or "gad-trl estimate-memory"
    )


def mode_of_recipe(argv: list[str]) -> tuple[str | None, str]:
    """`recipe_mode` of a `gad-trl` command line (`["--config", recipe.yaml, ...]`), read as `gad-trl estimate-memory`
    reads it: the stage, the launch and the training fields, without counting any model."""
    from ..memory.recipe import launch_from_args, recipe_mode_of_args, stage_mode
    from .launch import split_launch_args
    from .train import peek_stage

    other = stage_mode(peek_stage(argv))
    if other is not None:
        return other
    parser = make_parser()
    launch_args, _ = split_launch_args(argv, parser)
    _, _, training_args, model_args, _ = parser.parse_args_and_config(list(argv), return_remaining_strings=True)
    return recipe_mode_of_args(training_args, model_args, launch_from_args(launch_args))


def run(argv: list[str]) -> int:
    from ..memory.recipe import launch_from_args
    from .launch import check_launch_args, split_launch_args

    from ..memory.recipe import stage_mode
    from .train import peek_stage

    argv = list(argv)
    try:
        other_stage = stage_mode(peek_stage(argv))
    except ValueError as err:  # unknown stage
        print(f"gad-trl estimate-memory: {err}", file=sys.stderr)
        return 2
    if other_stage is not None:  # e.g. a SeqKD recipe: its SFT fields are not this command's
        print(f"gad-trl estimate-memory: {other_stage[1]}; pass a GAD recipe.", file=sys.stderr)
        return 2
    parser = make_parser()
    # `accelerate launch` options (`accelerate_config`, `num_processes`, ...) are taken as `gad-trl gad` takes them,
    # from the recipe or the command line: they tell the mode the run trains in and its number of GPUs.
    try:
        launch_args, _ = split_launch_args(argv, parser)
        check_launch_args(launch_args, "estimate-memory")  # a typo is an error, not an `accelerate launch` option
        launch = launch_from_args(launch_args)
    except ValueError as err:  # unknown argument or accelerate config
        print(f"gad-trl estimate-memory: {err}", file=sys.stderr)
        return 2
    args, script_args, training_args, model_args, _ = parser.parse_args_and_config(argv, return_remaining_strings=True)
    try:
        return _run(args, script_args, training_args, model_args, _explicit_bf16(argv), launch)
    except MemoryEstimateError as err:
        print(f"gad-trl estimate-memory: {err}", file=sys.stderr)
        return 2


def count_models(training_args, model_args):
    """(student, discriminator) `ModelShape`s of a run's parsed arguments: the discriminator's adapter in every PEFT
    mode is the one its own fields describe (`discriminator_lora_*`). Also used by `benchmarks/gpu_check.py`."""
    lora = dict(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_target_modules=model_args.lora_target_modules)
    student = count_model(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code, **lora)
    disc_lora = dict(
        lora_r=training_args.discriminator_lora_r,
        lora_alpha=training_args.discriminator_lora_alpha,
        lora_target_modules=training_args.discriminator_lora_target_modules,
    )
    disc_name = training_args.discriminator_model_name_or_path
    if disc_name:
        discriminator = count_model(disc_name, **disc_lora)
    elif disc_lora == lora:
        discriminator = student
    else:  # the student's architecture with the discriminator's adapter
        discriminator = count_model(
            model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code, **disc_lora
        )
    return student, discriminator


def _run(args, script_args, training_args, model_args, bf16: bool | None = None, launch=None) -> int:
    from ..memory.recipe import Launch, recipe_mode_of_args

    launch = launch or Launch(None, None, "no launcher given")
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise MemoryEstimateError(f"Unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}.")
    if not model_args.model_name_or_path:
        raise MemoryEstimateError("--model_name_or_path is required (a local model directory or a Hub id).")
    num_gpus = args.num_gpus if args.num_gpus is not None else launch.num_processes or 1
    setups = parse_setups(args.setups) if args.setups else [(num_gpus, args.gpu_memory_gb)]
    for n, _ in setups:
        if n < 1:
            raise MemoryEstimateError(f"num_gpus must be >= 1, got {n}.")
    student, discriminator = count_models(training_args, model_args)
    from ..memory.estimator import load_model_config

    student_config, _ = load_model_config(model_args.model_name_or_path, training_args.trust_remote_code)
    modes = args.modes
    # TRL's ModelConfig (`use_peft`, `load_in_4bit`) and the PEFT discriminator's fields (`discriminator_use_peft`,
    # `discriminator_load_in_4bit`, `discriminator_shared_base`) select the LoRA / QLoRA / shared-base modes.
    run_mode, why = recipe_mode_of_args(training_args, model_args, launch)
    mode_notes = {run_mode: f"this run's mode ({why})"} if run_mode else {}
    by_setup = {}
    for n, gb in setups:
        settings = settings_from_args(script_args, training_args, model_args, args, student_config, n, bf16)
        by_setup[(n, gb)] = (settings, estimate_modes(student, discriminator, settings, modes))

    if args.report_format == "markdown":
        print(format_markdown({k: v[1] for k, v in by_setup.items()}, modes, run_mode))
        if run_mode is None or run_mode not in modes:
            print(f"\nThis run's mode: {run_mode or 'none of the listed modes'} ({why}).")
    elif args.report_format == "json":
        print(json.dumps(_as_json(student, discriminator, by_setup, run_mode, why), indent=2))
    else:
        for (n, gb), (settings, estimates) in by_setup.items():
            print(format_report(student, discriminator, settings, estimates, gb, mode_notes))
        if run_mode is None or run_mode not in modes:
            print(f"This run's mode: {run_mode or 'none of the listed modes'} ({why}).")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(_as_json(student, discriminator, by_setup, run_mode, why), f, indent=2)
    return 0


def _as_json(student, discriminator, by_setup, run_mode=None, why="") -> dict:
    from dataclasses import asdict

    from ..memory.estimator import ASSUMPTIONS

    return {
        "student": asdict(student),
        "discriminator": asdict(discriminator),
        "setups": [
            {"num_gpus": n, "gpu_memory_gb": gb, "settings": asdict(s), "estimates": {m: (e if isinstance(e, str) else e.to_dict()) for m, e in ests.items()}}
            for (n, gb), (s, ests) in by_setup.items()
        ],
        "run_mode": {"mode": run_mode, "reason": why},
        "assumptions": ASSUMPTIONS,
    }
