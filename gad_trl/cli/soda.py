"""`gad-trl soda`: the SODA baseline (arXiv 2604.03873), TRL's `DPOTrainer` with the teacher's answer as `chosen` and
a sample of the starting student as `rejected`, as TRL's `trl dpo` script.

`TrlParser` over (`GADScriptArguments`, `SODAConfig`, `ModelConfig`). Before training, the student as loaded from
`model_name_or_path` (or the server at `rejected_base_url`) answers every prompt once per teacher answer; the answers
are cached in `rejected_cache` (`gad_trl.baselines.soda`), so a rerun trains without sampling again. Launching works as
for `gad-trl gad`; under a multi-process launch the main process draws the samples while the others wait.

    gad-trl soda --config recipes/tiny/soda.yaml --rejected_temperature 0.8
"""

from __future__ import annotations

from trl import ModelConfig, TrlParser

from ..config import GADScriptArguments, SODAConfig
from . import launch as _launch
from .utils import build_train_and_save, judge_callbacks, prepare_run, quantization_config, refuse_rewards

MODULE = "gad_trl.cli.soda"


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((GADScriptArguments, SODAConfig, ModelConfig), prog=prog or "gad-trl soda")


def make_sampler(training_args, model_args):
    """Where the rejected samples come from: the server at `rejected_base_url`, else the student loaded here (on first
    use only: a complete cache loads nothing) with the run's model kwargs and quantization."""
    from ..baselines.soda import OpenAISampler, TransformersSampler

    if training_args.rejected_base_url:
        return OpenAISampler(training_args.rejected_base_url, training_args.rejected_model,
                             api_key_env=training_args.rejected_api_key_env,
                             concurrency=training_args.rejected_concurrency,
                             request_timeout=training_args.rejected_request_timeout,
                             max_retries=training_args.rejected_max_retries)
    kwargs = dict(training_args.model_init_kwargs or {})
    quantization = quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return TransformersSampler(model_args.model_name_or_path, batch_size=training_args.rejected_batch_size,
                               model_init_kwargs=kwargs, revision=model_args.model_revision,
                               trust_remote_code=training_args.trust_remote_code,
                               progress=not training_args.disable_tqdm)


def to_soda_dataset(dataset, training_args, sampler):
    """GAD rows -> SODA's preference rows (`gad_trl.baselines.soda.build_soda_dataset`) with the run's rejected_*
    settings, the samples cached in `training_args.rejected_cache_path()`."""
    from ..baselines.soda import build_soda_dataset

    return build_soda_dataset(
        dataset, sampler=sampler, teacher_response_column=training_args.teacher_response_column,
        temperature=training_args.rejected_temperature, top_p=training_args.rejected_top_p,
        max_new_tokens=training_args.rejected_max_new_tokens, seed=training_args.rejected_sampling_seed(),
        max_attempts=training_args.rejected_max_attempts, cache_path=training_args.rejected_cache_path(),
    )


def build_trainer(script_args, training_args, model_args, callbacks=None):
    """The `DPOTrainer` of a `gad-trl soda` run, its rejected samples drawn (or read from the cache); not trained."""
    from trl import DPOTrainer, get_peft_config

    refuse_rewards(script_args, "SODA trains on fixed (teacher, student) pairs without rewards")
    if script_args.tools:
        raise ValueError("tools: SODA samples and trains on text answers, without tool calls; remove `tools` from this "
                         "recipe, or run `gad-trl gad` for tool-using trajectories.")
    train_dataset, eval_dataset = prepare_run(script_args, training_args, model_args, "soda")
    callbacks = [*(callbacks or []), *judge_callbacks(script_args, training_args)]  # its checks before the sampling
    sampler = make_sampler(training_args, model_args)
    # One process draws and caches the samples; the others then read the complete cache (same file system).
    with training_args.main_process_first(local=False, desc="SODA rejected samples"):
        try:
            train_dataset = to_soda_dataset(train_dataset, training_args, sampler)
            if eval_dataset is not None:
                eval_dataset = to_soda_dataset(eval_dataset, training_args, sampler)
        finally:
            sampler.close()  # the sampling copy of the student is freed before DPOTrainer loads its own
    return DPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        quantization_config=quantization_config(model_args),
    )


def main(script_args, training_args, model_args):
    return build_train_and_save(build_trainer, script_args, training_args, model_args, "soda")


def run(argv: list[str]) -> int:
    return _launch.run_script(argv, make_parser(), main, MODULE, "soda")


if __name__ == "__main__":  # `accelerate launch --module gad_trl.cli.soda ...`
    _launch.main_in_launched_process(make_parser(), main)
