"""`gad-trl train`: the recipe-driven entry point, kept for recipes with a `stage:` key. It reads the stage (flag or
YAML) and runs `gad-trl gad` (`stage: gad`, the default), `gad-trl seqkd` (`stage: seqkd`) or `gad-trl soda`
(`stage: soda`).

    gad-trl train --config recipes/tiny/gad.yaml            # = gad-trl gad --config recipes/tiny/gad.yaml
    gad-trl train --config recipes/tiny/seqkd.yaml          # = gad-trl seqkd --config recipes/tiny/seqkd.yaml
    gad-trl train --config recipes/tiny/soda.yaml           # = gad-trl soda --config recipes/tiny/soda.yaml
"""

from __future__ import annotations

import os
import sys

from ..config import STAGES
from . import gad, seqkd, soda
from . import launch as _launch
from .launch import resolve_accelerate_config  # noqa: F401  (the `--accelerate_config` lookup, for callers of train)

MODULE = "gad_trl.cli.train"


def peek_stage(argv: list[str]) -> str:
    """The `stage` of a command line: `--stage X` / `--stage=X` wins over the YAML's `stage:`; default `gad`."""
    stage = None
    for i, arg in enumerate(argv):
        if arg == "--stage" and i + 1 < len(argv):
            stage = argv[i + 1]
        elif arg.startswith("--stage="):
            stage = arg.split("=", 1)[1]
    if stage is None and "--config" in argv:
        import yaml

        idx = argv.index("--config")
        if idx + 1 < len(argv):
            with open(argv[idx + 1]) as f:
                config = yaml.safe_load(f) or {}
            stage = config.get("stage") if isinstance(config, dict) else None
    stage = stage or "gad"
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
    return stage


def _command(stage: str):
    return {"seqkd": seqkd, "soda": soda}.get(stage, gad)


def make_parser(stage: str = "gad", prog: str | None = None):
    return _command(stage).make_parser(prog or "gad-trl train")


def parse_args(argv: list[str], fail_with_unknown_args: bool = True):
    """Parse a `gad-trl train` command line into `(script_args, training_args, model_args)`."""
    stage = peek_stage(argv)
    argv = _launch.command_line_checks(argv)
    parsed = make_parser(stage).parse_args_and_config(argv, fail_with_unknown_args=fail_with_unknown_args)
    parsed[0].stage = stage
    return parsed


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """The trainer a `gad-trl train` run would use (GADTrainer; SFTTrainer for `stage: seqkd`, DPOTrainer for
    `stage: soda`); not trained."""
    return _command(script_args.stage).build_trainer(script_args, training_args, model_args, callbacks)


def main(script_args, training_args, model_args):
    return _command(script_args.stage).main(script_args, training_args, model_args)


def split_launch_args(argv: list[str]) -> tuple[list[str], list[str]]:
    return _launch.split_launch_args(argv, make_parser(peek_stage(argv)))


def launch(argv: list[str], launch_command_fn=None) -> int:
    return _launch.launch(argv, make_parser(peek_stage(argv)), MODULE, launch_command_fn)


def run(argv: list[str]) -> int:
    """Entry point of `gad-trl train`: in-process for a plain command line, through accelerate with launch args."""
    stage = peek_stage(argv)

    def main_with_stage(script_args, training_args, model_args):
        script_args.stage = stage
        return main(script_args, training_args, model_args)

    return _launch.run_script(argv, make_parser(stage), main_with_stage, MODULE, "train", lambda a: launch(a))


if __name__ == "__main__":  # `accelerate launch --module gad_trl.cli.train ...`
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*parse_args(sys.argv[1:]))
