"""`gad-trl train`: a GAD run (GRPO student + adversarial discriminator) or, with `stage: seqkd`, the SeqKD baseline.

Mirrors TRL's `trl grpo` / `trl sft` scripts: `TrlParser` over (`GADScriptArguments`, `GADConfig` | `SeqKDConfig`,
`ModelConfig`), YAML through `--config`, flags override the YAML. With `--accelerate_config <file or name>` (or any
`accelerate launch` flag such as `--num_processes`) the run is re-launched through `accelerate launch`.

    gad-trl train --config recipes/tiny/gad.yaml
    gad-trl train --config recipes/tiny/seqkd.yaml --learning_rate 1e-5
    gad-trl train --config recipes/Qwen2.5-7B-Instruct/gad/config_lmsys.yaml --accelerate_config zero3
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from ..config import GADConfig, default_bf16_where_supported

STAGES = ("gad", "seqkd")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GADScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset_name, dataset_config, splits, streaming) plus the GAD stage and held-out split.

    `dataset_name` is a Hub id, a local directory, or a `.parquet` / `.json` / `.jsonl` file (a `{split}` placeholder
    in a file path loads one file per split).
    """

    stage: str = field(
        default="gad",
        metadata={
            "help": "`gad`: GAD training (GADTrainer). `seqkd`: SFT of the student on the teacher responses "
            "(TRL's SFTTrainer) - the paper's SeqKD baseline and an optional first stage.",
            "choices": list(STAGES),
        },
    )
    dataset_test_size: float | None = field(
        default=None,
        metadata={
            "help": "Carve a held-out split of this fraction (or row count if >= 1) from the train split when the "
            "data set has no `dataset_test_split`. Used when `eval_strategy` is not `no`."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop rows whose chat-templated prompt is longer than this many tokens (as verl's "
            "filter_overlong_prompts; TRL 1.16's GRPOConfig has no prompt limit). Paper: 2048."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (smoke tests, debugging)."}
    )


@dataclass
class SeqKDConfig(SFTConfig):
    """TRL's `SFTConfig` for the SeqKD stage, with the teacher column and the paper's SeqKD learning rate (5e-6)."""

    learning_rate: float = field(default=5e-6, metadata={"help": "SeqKD learning rate. Paper: 5e-6."})
    teacher_response_column: str = field(
        default="teacher_response", metadata={"help": "Dataset column holding the teacher's response text."}
    )

    def __post_init__(self):
        default_bf16_where_supported(self)  # same rule as GADConfig
        super().__post_init__()


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


def make_parser(stage: str = "gad", prog: str | None = None) -> TrlParser:
    config_cls = GADConfig if stage == "gad" else SeqKDConfig
    return TrlParser((GADScriptArguments, config_cls, ModelConfig), prog=prog or "gad-trl train")


def parse_args(argv: list[str], fail_with_unknown_args: bool = True):
    """Parse a `gad-trl train` command line into `(script_args, training_args, model_args)`."""
    parser = make_parser(peek_stage(argv))
    return parser.parse_args_and_config(list(argv), fail_with_unknown_args=fail_with_unknown_args)


def _model_init_kwargs(training_args, model_args) -> dict:
    from trl import get_quantization_config

    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        from trl import get_kbit_device_map

        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = get_kbit_device_map()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if training_args.model_init_kwargs is not None:
        kwargs.update(training_args.model_init_kwargs)
    return kwargs


def load_splits(script_args, training_args):
    """(train, eval or None) from the script arguments."""
    from .utils import load_any_dataset

    if not script_args.dataset_name:
        raise ValueError("`dataset_name` is required (a Hub id, a local directory or a .parquet/.json/.jsonl file).")
    dataset = load_any_dataset(script_args.dataset_name, script_args.dataset_config, script_args.dataset_streaming)
    if script_args.dataset_train_split not in dataset:
        raise KeyError(
            f"Split {script_args.dataset_train_split!r} not in {script_args.dataset_name!r} (splits: {list(dataset)})."
        )
    train = dataset[script_args.dataset_train_split]
    eval_dataset = None
    wants_eval = training_args.eval_strategy != "no"
    if script_args.dataset_test_split in dataset:
        eval_dataset = dataset[script_args.dataset_test_split] if wants_eval else None
    elif script_args.dataset_test_size:
        size = script_args.dataset_test_size
        split = train.train_test_split(test_size=int(size) if size >= 1 else size, seed=training_args.seed)
        train, eval_dataset = split["train"], (split["test"] if wants_eval else None)
    elif wants_eval:
        raise ValueError(
            f"eval_strategy={training_args.eval_strategy!r} but {script_args.dataset_name!r} has no split "
            f"{script_args.dataset_test_split!r}; set `dataset_test_split` or `dataset_test_size`."
        )
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    return train, eval_dataset


def apply_prompt_filter(script_args, model_args, training_args, train_dataset, eval_dataset):
    """Drop the rows whose templated prompt exceeds `max_prompt_length` tokens (no-op when it is None)."""
    if script_args.max_prompt_length is None:
        return train_dataset, eval_dataset
    from transformers import AutoTokenizer

    from .utils import filter_long_prompts

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    train_dataset = filter_long_prompts(train_dataset, tokenizer, script_args.max_prompt_length)
    if eval_dataset is not None:
        eval_dataset = filter_long_prompts(eval_dataset, tokenizer, script_args.max_prompt_length)
    return train_dataset, eval_dataset


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """The trainer a `gad-trl train` run would use (GADTrainer or, for `stage: seqkd`, SFTTrainer); not trained."""
    from trl import get_peft_config

    training_args.model_init_kwargs = _model_init_kwargs(training_args, model_args)
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required.")
    train_dataset, eval_dataset = load_splits(script_args, training_args)
    train_dataset, eval_dataset = apply_prompt_filter(
        script_args, model_args, training_args, train_dataset, eval_dataset
    )

    if script_args.stage == "seqkd":
        from trl import SFTTrainer

        from .utils import to_seqkd_dataset

        column = training_args.teacher_response_column
        train_dataset = to_seqkd_dataset(train_dataset, column)
        if eval_dataset is not None:
            eval_dataset = to_seqkd_dataset(eval_dataset, column)
        return SFTTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=get_peft_config(model_args),
            callbacks=callbacks,
        )

    from .. import GADTrainer

    trainer = GADTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    # Read by gad_trl.hub when it writes the discriminator's model card (checkpoints and the final save).
    trainer._gad_dataset_name = script_args.dataset_name
    return trainer


def main(script_args, training_args, model_args):
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.accelerator.print(f"Training completed ({script_args.stage}).")
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to the Hub: https://huggingface.co/{trainer.hub_model_id}.")
    end = getattr(trainer, "end", None)
    if callable(end):
        end()
    return trainer


# --------------------------------------------------------------------------------------------------------------------
# accelerate launch
# --------------------------------------------------------------------------------------------------------------------


def resolve_accelerate_config(name: str) -> str:
    """A path for `--accelerate_config`: a file, a name in `recipes/accelerate_configs/` or one shipped with TRL."""
    if Path(name).is_file():
        return name
    for root in (Path.cwd() / "recipes" / "accelerate_configs", REPO_ROOT / "recipes" / "accelerate_configs"):
        candidate = root / f"{name}.yaml"
        if candidate.is_file():
            return str(candidate)
    import importlib.resources as resources

    candidate = resources.files("trl.accelerate_configs").joinpath(f"{name}.yaml")
    if candidate.is_file():
        return str(candidate)
    raise ValueError(
        f"Accelerate config {name!r} is neither a file nor a name in recipes/accelerate_configs/ or TRL's configs."
    )


def split_launch_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split a command line into (`accelerate launch` args, training args), as `trl <trainer>` does."""
    stage = peek_stage(argv)
    parser = make_parser(stage)
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


def launch(argv: list[str], launch_command_fn=None) -> int:
    """Run `gad-trl train` under `accelerate launch` with the given launch args."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args, training_args = split_launch_args(argv)
    accelerate_args = launch_command_parser().parse_args(
        launch_args + ["--module", "gad_trl.cli.train"] + training_args
    )
    (launch_command_fn or launch_command)(accelerate_args)
    return 0


def _check_launch_args(launch_args: list[str]) -> None:
    """Arguments that are neither training fields nor `accelerate launch` options are typos: say so plainly."""
    from accelerate.commands.launch import launch_command_parser

    known = {opt for action in launch_command_parser()._actions for opt in action.option_strings}
    unknown = [a.split("=", 1)[0] for a in launch_args if a.startswith("-") and a.split("=", 1)[0] not in known]
    if unknown:
        raise ValueError(
            f"Unknown arguments {unknown}: not fields of GADScriptArguments / the training config / ModelConfig, "
            "nor `accelerate launch` options. Check `gad-trl train --help`."
        )


def run(argv: list[str]) -> int:
    """Entry point of `gad-trl train`: in-process for a plain command line, through accelerate with launch args."""
    launch_args, _ = split_launch_args(argv)
    if launch_args:
        _check_launch_args(launch_args)
        return launch(argv)
    script_args, training_args, model_args = parse_args(argv)
    main(script_args, training_args, model_args)
    return 0


if __name__ == "__main__":  # `accelerate launch --module gad_trl.cli.train ...`
    _script_args, _training_args, _model_args = parse_args(sys.argv[1:])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(_script_args, _training_args, _model_args)
