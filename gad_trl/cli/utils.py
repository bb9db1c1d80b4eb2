"""Helpers shared by the `gad-trl` subcommands: the prompt-length filter and the steps every training script shares
(splits, model kwargs, train-save-push). The baselines' data conversions live in `gad_trl.baselines`.

Data set loading, row and token helpers live in `gad_trl.data`."""

from __future__ import annotations

import os


from ..data import load_any_dataset, row_prompt_length  # noqa: F401  (load_any_dataset: for the commands)
from ..preflight import import_callable


def filter_long_prompts(dataset, tokenizer, max_prompt_length: int):
    """Rows whose templated prompt has at most `max_prompt_length` tokens; logs how many were dropped."""
    import logging

    keep = dataset.filter(
        # The length the trainer checks against the student's context (gad_trl.data.row_prompt_length).
        lambda row, idx: row_prompt_length(tokenizer, row, idx) <= max_prompt_length,
        with_indices=True,
    )
    dropped = len(dataset) - len(keep)
    if dropped:
        logging.getLogger(__name__).warning(
            "Dropped %d of %d rows whose prompt is longer than max_prompt_length=%d tokens.",
            dropped, len(dataset), max_prompt_length,
        )
    if len(keep) == 0:
        raise ValueError(f"Every prompt is longer than max_prompt_length={max_prompt_length} tokens.")
    return keep


# --------------------------------------------------------------------------------------------------------------------
# The training scripts' shared steps (`gad-trl gad`, `gad-trl seqkd`)
# --------------------------------------------------------------------------------------------------------------------


def model_init_kwargs(training_args, model_args) -> dict:
    """`from_pretrained` kwargs from TRL's `ModelConfig` (revision, dtype, attention), as TRL's scripts build them;
    `training_args.model_init_kwargs` wins. The student's 4-bit/8-bit config is not here but in
    `quantization_config(model_args)`, passed to the trainer as TRL's scripts do: the discriminator inherits these
    kwargs and is quantized only by its own `discriminator_load_in_4bit`."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if training_args.model_init_kwargs is not None:
        kwargs.update(training_args.model_init_kwargs)
    return kwargs


def quantization_config(model_args):
    """The student's `BitsAndBytesConfig` (`load_in_4bit` / `load_in_8bit`), or None: TRL's `get_quantization_config`,
    with a clear error when bitsandbytes is missing."""
    from trl import get_quantization_config

    config = get_quantization_config(model_args)
    if config is not None:
        from ..discriminator.adapters import require_bitsandbytes

        require_bitsandbytes("load_in_4bit / load_in_8bit")
    return config


def load_splits(script_args, training_args):
    """(train, eval or None) from the script arguments."""
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

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    train_dataset = filter_long_prompts(train_dataset, tokenizer, script_args.max_prompt_length)
    if eval_dataset is not None:
        eval_dataset = filter_long_prompts(eval_dataset, tokenizer, script_args.max_prompt_length)
    return train_dataset, eval_dataset


def prepare_run(script_args, training_args, model_args, command: str):
    """The first steps of every training script: check the recipe's stage and the model, set the model's init kwargs,
    load the splits and drop over-long prompts. Returns `(train_dataset, eval_dataset or None)`."""
    check_stage(script_args, command)
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required.")
    from ..preflight import check_model_source

    check_model_source(model_args.model_name_or_path)
    training_args.model_init_kwargs = model_init_kwargs(training_args, model_args)
    train_dataset, eval_dataset = load_splits(script_args, training_args)
    return apply_prompt_filter(script_args, model_args, training_args, train_dataset, eval_dataset)


def build_train_and_save(build_trainer, script_args, training_args, model_args, name: str):
    """A training command's `main`: with `output_dir`'s lock held from before anything is written there (SODA's
    sample cache, checkpoints) to after the final save and push, build the trainer, train and save."""
    from ..run_folder import hold_output_dir

    with hold_output_dir(training_args.output_dir, enabled=training_args.should_save):
        return train_and_save(build_trainer(script_args, training_args, model_args), script_args, training_args, name)


def train_and_save(trainer, script_args, training_args, name: str):
    """Train (resuming if asked), save to `output_dir`, push when `push_to_hub`: the end of every training script."""
    from ..callbacks import OutputDirLockCallback
    from ..run_folder import held_lock, resolve_resume_checkpoint

    if not any(isinstance(cb, OutputDirLockCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(OutputDirLockCallback())  # (GADTrainer has it already)
    # "true" (a bare --resume_from_checkpoint) = the latest complete checkpoint, never a folder named "true".
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args.resume_from_checkpoint,
                                                                   training_args.output_dir))
    trainer.accelerator.print(f"Training completed ({name}).")
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    lock = held_lock(training_args.output_dir)
    if lock is not None and lock.verify() is not None:
        raise RuntimeError(
            f"The model is saved to {training_args.output_dir}, but another run ({lock.conflict}) took that "
            "output_dir's lock during this run (the lock file was deleted): its checkpoints and this run's may have "
            "overwritten each other there. Check both runs' outputs, and give each run its own output_dir."
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Model pushed to the Hub: https://huggingface.co/{trainer.hub_model_id}.")
    end = getattr(trainer, "end", None)
    if callable(end):
        end()
    return trainer


def check_stage(script_args, command: str) -> None:
    """A recipe written for the other trainer (`stage:`) is an error naming the command to run it with."""
    if script_args.stage not in (None, command):
        raise ValueError(
            f"This recipe says `stage: {script_args.stage}`, but `gad-trl {command}` runs the {command} trainer: run "
            f"it with `gad-trl {script_args.stage}` (or `gad-trl train`, which follows `stage:`)."
        )


# The rewards of TRL's `trl.rewards` that `reward_funcs` names directly (TRL's `trl grpo` script keeps the same list).
NAMED_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")


def refuse_rewards(script_args, why: str) -> None:
    """`reward_funcs` / `reward_model_name_or_path` are GAD's: a baseline command refuses them, saying `why`."""
    if script_args.reward_funcs or script_args.reward_model_name_or_path:
        raise ValueError(f"reward_funcs / reward_model_name_or_path are GAD rewards; {why}. Remove them from this "
                         "recipe, or run `gad-trl gad`.")


def load_reward_funcs(script_args) -> list:
    """The extra reward columns of a `gad-trl gad` run, in column order after the discriminator's:
    `reward_model_name_or_path` (kept as a path: GRPOTrainer loads it), then each of `reward_funcs`, a name from
    `trl.rewards` or an import path (`import_callable`)."""
    import trl.rewards

    rewards = [script_args.reward_model_name_or_path] if script_args.reward_model_name_or_path else []
    for name in script_args.reward_funcs or []:
        if name in NAMED_REWARDS:
            rewards.append(getattr(trl.rewards, name))
        elif "." not in name and ":" not in name:
            raise ValueError(
                f"Unknown reward function {name!r}: give one of {', '.join(NAMED_REWARDS)} (from trl.rewards) or a "
                "dotted import path such as my_rewards.format_reward."
            )
        else:
            rewards.append(import_callable(name, "reward_funcs"))
    return rewards


def load_tools(script_args) -> list | None:
    """The tools of a run (`tools:` import paths, comma-separated too), passed to TRL's tool-calling rollouts; None
    without. Resolved as `generate-teacher --tools` resolves them (`gad_trl.workflow.tool_calling.resolve_tools`)."""
    from ..workflow.tool_calling import resolve_tools

    return resolve_tools(script_args.tools) if script_args.tools else None


def judge_callbacks(script_args, training_args) -> list:
    """`[JudgeEvalCallback]` when `judge_eval_config` names a `gad-trl evaluate` YAML, else `[]`."""
    if not script_args.judge_eval_config:
        return []
    from ..workflow.checkpoint_selection import JudgeEvalCallback
    from .evaluate import make_parser

    path = script_args.judge_eval_config
    if not os.path.isfile(path):
        raise FileNotFoundError(f"judge_eval_config: {path!r} is not a file (a `gad-trl evaluate` YAML).")
    if training_args.save_strategy == "no":
        raise ValueError(
            "judge_eval_config judges each saved checkpoint, but save_strategy is 'no': set save_strategy to 'steps' "
            "(with save_steps) or 'epoch'."
        )
    (eval_args,) = make_parser().parse_args_and_config(["--config", path])  # EvaluationArguments checks its keys
    return [JudgeEvalCallback(eval_args)]
