"""Re-launching a training command through `accelerate launch`, as `trl <trainer>` does.

Arguments that are not fields of the command's dataclasses are `accelerate launch` options (`--num_processes`, ...);
`--accelerate_config <file or name>` picks a config file: a path, a name shipped with gad_trl (`ddp`, `zero3`,
`fsdp2`, in `gad_trl/accelerate_configs/`) or one shipped with TRL (`zero2`, `multi_gpu`, ...).
"""

from __future__ import annotations

import importlib.resources as resources
from pathlib import Path


def resolve_accelerate_config(name: str) -> str:
    """A path for `--accelerate_config`: a file, a config shipped with gad_trl, or one shipped with TRL."""
    if Path(name).is_file():
        return name
    ours = resources.files("gad_trl") / "accelerate_configs"  # package data (pyproject.toml)
    for candidate in (ours / f"{name}.yaml", resources.files("trl.accelerate_configs") / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    shipped = sorted(p.name.removesuffix(".yaml") for p in ours.iterdir() if p.name.endswith(".yaml"))
    raise ValueError(
        f"Accelerate config {name!r} is neither a file nor a config shipped with gad_trl ({', '.join(shipped)}) or "
        "TRL (trl/accelerate_configs)."
    )


def split_launch_args(argv: list[str], parser) -> tuple[list[str], list[str]]:
    """Split a command line into (`accelerate launch` args, training args) with the command's `TrlParser`."""
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        list(argv), return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = config_remaining + cli_remaining
    if "--accelerate_config" in launch_args:
        i = launch_args.index("--accelerate_config")
        if i + 1 >= len(launch_args):
            raise ValueError("Expected a value after `--accelerate_config`.")
        path = resolve_accelerate_config(launch_args[i + 1])
        launch_args = ["--config_file", path] + launch_args[:i] + launch_args[i + 2 :]
    # Remove the launch args (an ordered subsequence of argv) from the training args.
    training_args, it = [], iter(cli_remaining)
    current = next(it, None)
    for arg in argv:
        if current is not None and arg == current:
            current = next(it, None)
        else:
            training_args.append(arg)
    return launch_args, training_args


def check_launch_args(launch_args: list[str], command: str) -> None:
    """Arguments that are neither training fields nor `accelerate launch` options are typos: say so plainly."""
    from accelerate.commands.launch import launch_command_parser

    known = {opt for action in launch_command_parser()._actions for opt in action.option_strings}
    unknown = [a.split("=", 1)[0] for a in launch_args if a.startswith("-") and a.split("=", 1)[0] not in known]
    if unknown:
        raise ValueError(
            f"Unknown arguments {unknown}: not fields of GADScriptArguments / the training config / ModelConfig, "
            f"nor `accelerate launch` options. Check `gad-trl {command} --help`."
        )


def launch(argv: list[str], parser, module: str, launch_command_fn=None) -> int:
    """Run `python -m <module> <training args>` under `accelerate launch <launch args>`."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args, training_args = split_launch_args(argv, parser)
    accelerate_args = launch_command_parser().parse_args(launch_args + ["--module", module] + training_args)
    (launch_command_fn or launch_command)(accelerate_args)
    return 0


def command_line_checks(argv: list[str]) -> list[str]:
    """`--config` given twice is an error (TrlParser would read one file silently); a bare `--resume_from_checkpoint`
    reads `--resume_from_checkpoint true` (the latest checkpoint, gad_trl.run_folder)."""
    from ..run_folder import with_resume_flag_value

    configs = [a for a in argv if a == "--config" or a.startswith("--config=")]
    if len(configs) > 1:
        raise ValueError(
            f"--config is given {len(configs)} times; one YAML file is read. Merge the files, or keep one and pass "
            "the other settings as flags (flags override the YAML)."
        )
    return with_resume_flag_value(argv)


def run_script(argv: list[str], parser, main, module: str, command: str, launch_fn=None) -> int:
    """A training command's entry point: in-process for a plain command line, else `accelerate launch` of `module`
    (or `launch_fn(argv)`)."""
    argv = command_line_checks(argv)
    launch_args, _ = split_launch_args(argv, parser)
    if launch_args:
        check_launch_args(launch_args, command)
        return launch_fn(argv) if launch_fn is not None else launch(argv, parser, module)
    main(*parser.parse_args_and_config(list(argv)))
    return 0


def main_in_launched_process(parser, main) -> None:
    """`python -m gad_trl.cli.<command>` under `accelerate launch`: parse sys.argv and run."""
    import os
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*parser.parse_args_and_config(command_line_checks(sys.argv[1:])))
