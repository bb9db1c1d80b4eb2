"""Which `gad_trl.memory.estimator` mode a recipe trains in, read from its config fields and its launch.

`gad-trl estimate-memory --config recipe.yaml` marks that mode in its report, so the row that applies to the recipe
is not left to the reader to guess. The launch is read the way `gad-trl gad` reads it (`gad_trl.cli.launch`): the
`accelerate launch` options in the recipe or on the command line (`accelerate_config`, `num_processes`, ...), then
the accelerate config file they name. The discriminator's layout follows the same rule as the trainer
(`gad_trl.discriminator.sharding.resolve_discriminator_sharding`): `auto` shards it exactly when the launcher shards
the student (FSDP, DeepSpeed ZeRO-3). A LoRA student (TRL's `use_peft`, `load_in_4bit`) with a PEFT discriminator
(`discriminator_use_peft`, `discriminator_load_in_4bit`, `discriminator_shared_base`) is `lora`, `qlora`,
`shared_base` or `shared_base_qlora`; a combination those modes do not describe is reported as none, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    """How a recipe is launched, as far as the memory estimate cares."""

    shards_student: bool | None  # None: no launcher given (`gad-trl gad` then runs one process, in place)
    num_processes: int | None
    description: str


def launch_from_args(launch_args: list[str]) -> Launch:
    """The launch of `accelerate launch <launch_args>` (as split off by `gad_trl.cli.launch.split_launch_args`, with
    `--accelerate_config` already turned into `--config_file <path>`)."""
    if not launch_args:
        return Launch(None, None, "no launcher given")
    from accelerate.commands.launch import launch_command_parser

    opts, _ = launch_command_parser().parse_known_args([*launch_args, "estimate-memory"])  # the script is required
    distributed_type, zero_stage, num_processes, source = None, None, None, "accelerate launch flags"
    if opts.config_file:
        from accelerate.commands.config.config_args import load_config_from_file

        config = load_config_from_file(opts.config_file)
        distributed_type = str(getattr(config, "distributed_type", "") or "")
        zero_stage = (getattr(config, "deepspeed_config", None) or {}).get("zero_stage")
        num_processes = getattr(config, "num_processes", None)
        source = Path(opts.config_file).name
    # Flags override the file, as in `accelerate launch`.
    if opts.use_deepspeed:
        distributed_type = "DEEPSPEED"
    if opts.zero_stage is not None:
        zero_stage = opts.zero_stage
    if opts.use_fsdp:
        distributed_type = "FSDP"
    if opts.num_processes is not None:
        num_processes = opts.num_processes
    distributed_type = (distributed_type or "").rsplit(".", 1)[-1].upper()  # "DistributedType.FSDP" -> "FSDP"
    if distributed_type == "FSDP":
        shards, kind = True, "FSDP"
    elif distributed_type == "DEEPSPEED":
        shards, kind = zero_stage == 3, f"DeepSpeed ZeRO-{zero_stage}"
        if zero_stage in (1, 2):  # no mode of its own: counted as replicated, an upper bound for the student
            kind += " (its sharded student gradients / AdamW states are counted replicated: an upper bound)"
    else:
        shards, kind = False, distributed_type or "multi-process"
    procs = f", {num_processes} processes" if num_processes else ""
    return Launch(shards, num_processes, f"{kind}{procs} ({source})")


def recipe_mode(
    discriminator_sharding: str,
    launch: Launch,
    student_peft: bool = False,
    student_4bit: bool = False,
    discriminator_peft: bool = False,
    discriminator_4bit: bool = False,
    shared_base: bool = False,
) -> tuple[str | None, str]:
    """(`gad_trl.memory.estimator.MODES` key the recipe trains in, or None when none of them describes it; why).

    `student_peft` / `student_4bit` are TRL `ModelConfig`'s `use_peft` / `load_in_4bit`; `discriminator_peft`,
    `discriminator_4bit` and `shared_base` are `GADConfig`'s `discriminator_use_peft`, `discriminator_load_in_4bit` and
    `discriminator_shared_base` (`gad_trl.discriminator.adapters`)."""
    from ..discriminator.sharding import SHARDING_MODES

    if discriminator_sharding not in SHARDING_MODES:
        raise ValueError(
            f"discriminator_sharding={discriminator_sharding!r} is not supported; choose one of {', '.join(SHARDING_MODES)}."
        )
    if student_peft or discriminator_peft or shared_base:
        return _peft_mode(
            discriminator_sharding, launch, student_peft, student_4bit, discriminator_peft, discriminator_4bit, shared_base
        )
    reason = f"discriminator_sharding: {discriminator_sharding}, launcher: {launch.description}"
    if discriminator_sharding == "none":
        return ("sharded_student" if launch.shards_student else "replicated"), reason
    if discriminator_sharding == "auto":
        return ("sharded" if launch.shards_student else "replicated"), reason
    if discriminator_sharding == "fsdp2":
        if launch.shards_student is None:
            # fsdp2 needs a distributed launch; the recipes that ask for it run under ZeRO-3 / FSDP.
            return "sharded", reason + " (assumed to shard the student, as ZeRO-3 / FSDP do; pass --accelerate_config to check)"
        if launch.shards_student:
            return "sharded", reason
        return None, reason + ": a sharded discriminator next to a replicated student is none of the listed modes"


def _peft_mode(
    discriminator_sharding, launch, student_peft, student_4bit, discriminator_peft, discriminator_4bit, shared_base
) -> tuple[str | None, str]:
    """The mode of a run with a LoRA student and/or a PEFT discriminator. The listed PEFT modes pair a LoRA student
    with a LoRA discriminator whose frozen base is in the same precision (`lora`, `qlora`) or is the student's own
    (`shared_base`, `shared_base_qlora`); anything else is none of them, and the reason says which part differs."""
    student = "4-bit LoRA student" if student_4bit else "LoRA student"
    if not student_peft:
        if shared_base:
            return None, "discriminator_shared_base without a LoRA student (use_peft): the trainer refuses it"
        return None, "full student with a LoRA discriminator: none of the listed modes (they all train a LoRA student)"
    if not (discriminator_peft or shared_base):
        return None, f"{student} with a full discriminator: none of the listed modes (they assume a PEFT discriminator)"
    if discriminator_sharding == "fsdp2":
        return None, "discriminator_sharding: fsdp2 with a PEFT discriminator: the trainer refuses it (use auto or none)"
    if shared_base:
        mode = "shared_base_qlora" if student_4bit else "shared_base"
        why = f"use_peft{' + load_in_4bit' if student_4bit else ''} + discriminator_shared_base"
    elif student_4bit != discriminator_4bit:
        bases = ("4-bit", "16/32-bit") if student_4bit else ("16/32-bit", "4-bit")
        return None, (
            f"{student} on a {bases[0]} base, LoRA discriminator on a {bases[1]} base: none of the listed modes (lora "
            "and qlora both assume the two bases in the same precision; the run lies between them)"
        )
    else:
        mode = "qlora" if student_4bit else "lora"
        why = f"use_peft + discriminator_use_peft{' + load_in_4bit + discriminator_load_in_4bit' if student_4bit else ''}"
    why += f", launcher: {launch.description}"
    if launch.shards_student:
        why += " (the PEFT modes count a whole frozen base per GPU: an upper bound where the launcher shards it)"
    return mode, why


def recipe_mode_of_args(training_args, model_args, launch: Launch) -> tuple[str | None, str]:
    """`recipe_mode` of parsed `GADConfig` + TRL `ModelConfig` arguments (what `gad-trl estimate-memory` reads)."""
    return recipe_mode(
        training_args.discriminator_sharding,
        launch,
        student_peft=bool(model_args.use_peft),
        student_4bit=bool(model_args.load_in_4bit),
        discriminator_peft=bool(training_args.discriminator_use_peft),
        discriminator_4bit=bool(training_args.discriminator_load_in_4bit),
        shared_base=bool(training_args.discriminator_shared_base),
    )


def stage_mode(stage: str) -> tuple[str | None, str] | None:
    """None for a GAD recipe; for any other stage, (None, why no mode applies)."""
    if stage == "gad":
        return None
    return None, (
        f"stage: {stage} trains no discriminator: none of the listed modes (they all count a GAD run's student, "
        "reference and discriminator)"
    )
