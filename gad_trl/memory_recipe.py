"""Which `gad_trl.memory` mode a recipe trains in, read from its config fields and its launch.

`gad-trl estimate-memory --config recipe.yaml` marks that mode in its report, so the row that applies to the recipe
is not left to the reader to guess. The launch is read the way `gad-trl gad` reads it (`gad_trl.cli.launch`): the
`accelerate launch` options in the recipe or on the command line (`accelerate_config`, `num_processes`, ...), then
the accelerate config file they name. The discriminator's layout follows the same rule as the trainer
(`gad_trl.discriminator_sharding.resolve_discriminator_sharding`): `auto` shards it exactly when the launcher shards
the student (FSDP, DeepSpeed ZeRO-3).
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
    discriminator_sharding: str, launch: Launch, student_peft: bool = False, student_4bit: bool = False
) -> tuple[str | None, str]:
    """(`gad_trl.memory.MODES` key the recipe trains in, or None when none of them describes it; why)."""
    if student_peft:
        # Today the discriminator is always a full model, so a LoRA student has no mode of its own (`lora` / `qlora` /
        # `shared_base*` assume a PEFT discriminator too). When the PEFT discriminator lands, its config fields select
        # `lora` / `qlora` / `shared_base` / `shared_base_qlora` here.
        what = "4-bit LoRA" if student_4bit else "LoRA"
        return None, f"{what} student with a full discriminator: none of the listed modes (they assume a PEFT discriminator)"
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
    from .discriminator_sharding import SHARDING_MODES

    raise ValueError(
        f"discriminator_sharding={discriminator_sharding!r} is not supported; choose one of {', '.join(SHARDING_MODES)}."
    )
