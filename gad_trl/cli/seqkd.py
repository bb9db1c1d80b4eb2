"""`gad-trl seqkd`: the SeqKD baseline (TRL's `SFTTrainer` on the teacher responses), as TRL's `trl sft` script.

The paper's SeqKD baseline and an optional first stage before GAD. `TrlParser` over (`GADScriptArguments`,
`SeqKDConfig`, `ModelConfig`); rows are converted to TRL's conversational prompt-completion format, so the loss is
on the teacher response only. Launching works as for `gad-trl gad`.

    gad-trl seqkd --config recipes/tiny/seqkd.yaml --learning_rate 1e-5
"""

from __future__ import annotations

from trl import ModelConfig, TrlParser

from ..config import GADScriptArguments, SeqKDConfig
from . import launch as _launch
from ..baselines.seqkd import to_seqkd_dataset
from .utils import build_train_and_save, judge_callbacks, load_tools, prepare_run, quantization_config, refuse_rewards

MODULE = "gad_trl.cli.seqkd"


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((GADScriptArguments, SeqKDConfig, ModelConfig), prog=prog or "gad-trl seqkd")


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """The `SFTTrainer` of a `gad-trl seqkd` run; not trained."""
    from trl import SFTTrainer, get_peft_config

    refuse_rewards(script_args, "SeqKD trains on the teacher text without rewards")
    train_dataset, eval_dataset = prepare_run(script_args, training_args, model_args, "seqkd")
    column = training_args.teacher_response_column
    tokenizer = _student_tokenizer(model_args, training_args)
    tools = load_tools(script_args)  # the prompt of a trajectory is rendered with them, as GAD's rollouts are
    train_dataset = to_seqkd_dataset(train_dataset, column, tokenizer, tools)
    if eval_dataset is not None:
        eval_dataset = to_seqkd_dataset(eval_dataset, column, tokenizer, tools)
    return SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=[*(callbacks or []), *judge_callbacks(script_args, training_args)],
        quantization_config=quantization_config(model_args),
    )


def _student_tokenizer(model_args, training_args):
    """The student's tokenizer, which lays out tool-using trajectories (`to_seqkd_dataset`)."""
    from transformers import AutoTokenizer

    trust = (training_args.model_init_kwargs or {}).get("trust_remote_code", False)
    return AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                         trust_remote_code=trust)


def main(script_args, training_args, model_args):
    return build_train_and_save(build_trainer, script_args, training_args, model_args, "seqkd")


def run(argv: list[str]) -> int:
    return _launch.run_script(argv, make_parser(), main, MODULE, "seqkd")


if __name__ == "__main__":  # `accelerate launch --module gad_trl.cli.seqkd ...`
    _launch.main_in_launched_process(make_parser(), main)
