"""`gad-trl gad`: a GAD run (GADTrainer: GRPO student + adversarial discriminator), as TRL's `trl grpo` script.

`TrlParser` over (`GADScriptArguments`, `GADConfig`, `ModelConfig`); YAML through `--config`, flags override the
YAML. With `--accelerate_config <file or name>` (or any `accelerate launch` flag such as `--num_processes`) the run is
re-launched through `accelerate launch`.

    gad-trl gad --config recipes/tiny/gad.yaml
    gad-trl gad --config recipes/Qwen2.5-7B-Instruct/gad/config_lmsys.yaml --accelerate_config zero3
"""

from __future__ import annotations

from trl import ModelConfig, TrlParser

from ..config import GADConfig, GADScriptArguments
from . import launch as _launch
from .utils import (build_train_and_save, judge_callbacks, load_reward_funcs, load_tools, prepare_run,
                    quantization_config)

MODULE = "gad_trl.cli.gad"


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((GADScriptArguments, GADConfig, ModelConfig), prog=prog or "gad-trl gad")


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """The `GADTrainer` of a `gad-trl gad` run; not trained."""
    from trl import get_peft_config

    from ..trainer import GADTrainer

    train_dataset, eval_dataset = prepare_run(script_args, training_args, model_args, "gad")
    trainer = GADTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=[*(callbacks or []), *judge_callbacks(script_args, training_args)],
        quantization_config=quantization_config(model_args),
        reward_funcs=load_reward_funcs(script_args),
        tools=load_tools(script_args),
    )
    trainer.dataset_name = script_args.dataset_name  # named in the model cards (see GADTrainer.dataset_name)
    return trainer


def main(script_args, training_args, model_args):
    return build_train_and_save(build_trainer, script_args, training_args, model_args, "gad")


def run(argv: list[str]) -> int:
    return _launch.run_script(argv, make_parser(), main, MODULE, "gad")


if __name__ == "__main__":  # `accelerate launch --module gad_trl.cli.gad ...`
    _launch.main_in_launched_process(make_parser(), main)
