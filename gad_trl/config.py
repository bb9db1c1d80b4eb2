"""The package's configuration classes, one home for all of them (as TRL's `<method>_config.py`):

- `GADConfig`: TRL's `GRPOConfig` plus the discriminator, the warm-up schedule and the teacher column;
- `SeqKDConfig`: TRL's `SFTConfig` for the SeqKD baseline (`gad-trl seqkd`);
- `GADScriptArguments`: TRL's `ScriptArguments` plus the data options of the `gad-trl gad` / `gad-trl seqkd` scripts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig, ScriptArguments, SFTConfig

from .discriminator.losses import DEFAULT_CONSTANTS, LOSS_TYPES
from .redact import redacting
from .workflow.endpoint import Endpoint, api_key_env_field, base_url_field, max_retries_field, request_timeout_field
from .workflow.tool_calling import DEFAULT_MAX_TOOL_RESULT_CHARS, DEFAULT_TOOL_TIMEOUT


def default_bf16_where_supported(config) -> None:
    """TRL defaults to bf16 and then refuses to start on a machine without it (a CPU box, an old GPU); GAD's configs
    pick bf16 only where it runs, so one recipe starts on a laptop and on a cluster. An explicit value is kept."""
    if config.bf16 is None and not config.fp16:
        import torch

        # use_cpu=True trains on the CPU even where a GPU exists: follow that device, not the machine's best one.
        config.bf16 = bool(not config.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# The values GRPOTrainer accepts for its enum-like fields (TRL 1.16, `GRPOConfig`'s help texts and the branches of
# `GRPOTrainer`): TRL itself checks several of them only at the first GRPO step, after the warm-ups.
TRL_CHOICES = {
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "importance_sampling_level": ("token", "sequence"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "scale_rewards": ("group", "batch", "none"),
    "vllm_mode": ("server", "colocate"),
    "vllm_model_impl": ("vllm", "transformers"),
    "vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
}


def check_choices(args) -> None:
    """Every enum-like field is checked when the config is built, so a typo fails before the first step."""
    from transformers import SchedulerType

    choices = dict(TRL_CHOICES, discriminator_lr_scheduler_type=tuple(t.value for t in SchedulerType))
    if hasattr(args, "teacher_special_tokens"):
        from .data import TEACHER_SPECIAL_TOKENS

        choices["teacher_special_tokens"] = TEACHER_SPECIAL_TOKENS
    for name, allowed in choices.items():
        value = getattr(args, name, None)
        if value is not None and value not in allowed:
            raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}. Fix `{name}`.")


@redacting  # no secret in hparams, printed configs or training_args.bin (gad_trl.redact)
@dataclass
class GADConfig(GRPOConfig):
    r"""
    Configuration class for [`GADTrainer`]: every [`~trl.GRPOConfig`] field, plus the ones below. The per-step settings
    default to the GAD paper's values (arXiv 2511.10643); schedule lengths depend on the run and default to 0 (the
    paper's `critic_warmup_steps` is 10, in its recipe). The algorithm is described in `docs/algorithm.md`. Each
    field's `help` (shown by `gad-trl gad --help`) carries the same text as here.

    Parameters:
        > Parameters that differ from GRPOConfig's defaults (the paper's values)

        learning_rate (`float`, *optional*, defaults to `1e-6`):
            Student (policy) learning rate. Paper: 1e-6.
        temperature (`float`, *optional*, defaults to `0.8`):
            Sampling temperature of the student. Paper: 0.8.
        beta (`float`, *optional*, defaults to `1e-3`):
            KL coefficient to the reference model (TRL's k3 estimator). Paper: 1e-3. 0 = no reference model.
        max_grad_norm (`float`, *optional*, defaults to `0.2`):
            Gradient clipping of the student (and of the discriminator, unless discriminator_max_grad_norm is set).
            Paper: 0.2.

        > Parameters that control the schedule (counted in optimizer steps, `global_step`)

        critic_warmup_steps (`int`, *optional*, defaults to `0`):
            Optimizer steps at the start where only the discriminator learns; the student is frozen (learning rate
            0, no policy loss). Paper: 10. A warning when it covers the whole run (>= max_steps).
        sft_warmup_steps (`int`, *optional*, defaults to `0`):
            Optimizer steps after `critic_warmup_steps` where the student is trained by cross-entropy on the teacher
            responses (instead of GRPO) while the discriminator keeps learning.
        sft_loss_coef (`float`, *optional*, defaults to `1.0`):
            After the warm-ups, add this weight times the student's cross-entropy on the teacher responses of the batch
            to the GRPO loss (as InstructGPT's PPO-ptx mixes its pre-training loss in), so the policy keeps what the
            SFT warm-up taught while it follows the discriminator. 1.0 won the CPU quality suite's mean (README); 0 =
            pure GRPO on discriminator rewards (the paper).

        > Parameters that control the data

        teacher_response_column (`str`, *optional*, defaults to `"teacher_response"`):
            Dataset column holding the teacher's response text.
        teacher_special_tokens (`str`, *optional*, defaults to `"text"`):
            What a special-token string inside a teacher response (a literal `<|im_end|>`) becomes: `text` encodes it
            as the plain text it is (never as a control token, which would be a tell for the discriminator);
            `error` refuses such rows at data preparation, naming the row.

        > Parameters that control the discriminator model and its optimizer

        discriminator_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            Discriminator backbone; None = initialise from the student's weights.
        discriminator_init_kwargs (`dict` or `str` or `None`, *optional*, defaults to `None`):
            Keyword arguments for the discriminator's from_pretrained; defaults to model_init_kwargs.
        discriminator_learning_rate (`float`, *optional*, defaults to `1e-6`):
            Discriminator learning rate.
        discriminator_weight_decay (`float`, *optional*, defaults to `0.0`):
            Discriminator AdamW weight decay.
        discriminator_adam_beta1 (`float`, *optional*, defaults to `0.9`):
            Discriminator AdamW beta1.
        discriminator_adam_beta2 (`float`, *optional*, defaults to `0.999`):
            Discriminator AdamW beta2.
        discriminator_lr_scheduler_type (`str`, *optional*, defaults to `"constant_with_warmup"`):
            Discriminator LR schedule (transformers' get_scheduler).
        discriminator_warmup_steps (`int`, *optional*, defaults to `0`):
            Discriminator LR warm-up, in discriminator updates (one per generation batch).
        discriminator_max_grad_norm (`float` or `None`, *optional*, defaults to `None`):
            Gradient clipping of the discriminator; None = max_grad_norm.
        discriminator_mini_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Sequences per discriminator forward/backward. None = one forward over the generation batch whose
            detached scores are the rewards; a number bounds memory at the cost of a second, no-grad pass.
        discriminator_gradient_checkpointing (`bool` or `None`, *optional*, defaults to `None`):
            Gradient checkpointing in the discriminator backbone. None = follow `gradient_checkpointing`: without it
            the discriminator's fwd+bwd over every completion dominates peak memory (benchmarks/).
        discriminator_sharding (`str`, *optional*, defaults to `"auto"`):
            How the discriminator is laid out over processes. 'auto': sharded with torch FSDP2 when the launcher
            shards the student (FSDP, DeepSpeed ZeRO-3), replicated otherwise. 'fsdp2': always sharded (one
            `fully_shard` unit per decoder layer + the root; float32 master weights and optimizer states, bf16/fp16
            compute when `bf16`/`fp16` is on); needs a distributed launch, at world size 1 it splits nothing but keeps
            the float32 master weights. 'none': a full copy with its own AdamW on every process.
        discriminator_pooling (`str` or `None`, *optional*, defaults to `None`):
            How the discriminator turns a sequence into a score: 'last' = the value head at the last response token
            (paper), 'mean' = the value head on the mean hidden state of the response tokens. Saved in the
            discriminator's config.json, so a reloaded discriminator scores the same way. None = the loaded
            discriminator's saved choice ('last' for a new one).
        discriminator_length_penalty (`float`, *optional*, defaults to `0.0`):
            beta of the length-debiased reward: score - beta * log1p(response tokens), on the reward only (the
            discriminator's loss reads the raw scores). Saved in the discriminator's config.json. 0 = the paper's raw
            score.
        discriminator_score_clip (`float` or `None`, *optional*, defaults to `None`):
            Clip the reward (after the length penalty) to [-c, c]; on the reward only, saved in the discriminator's
            config.json. None = no clipping (paper).
        discriminator_freeze_after_step (`int` or `None`, *optional*, defaults to `None`):
            Stop updating the discriminator from this global step on (it still scores and logs its metrics): the
            paper's frozen-discriminator ablation, e.g. critic_warmup_steps + sft_warmup_steps. None = co-trained at
            every step (GAD).
        discriminator_num_iterations (`int`, *optional*, defaults to `1`):
            Discriminator optimizer steps per generation batch, all on the same pairs (the GAN critic's
            n_critic; GRPO's num_iterations is the student's). The rewards are the scores from before the first;
            the logged metrics are the first step's. 1 = the paper.
        discriminator_replay_buffer_size (`int`, *optional*, defaults to `0`):
            Keep a uniform sample (reservoir) of this many past student completions, from every step so far, and mix
            some into each discriminator update as extra negatives, so the discriminator keeps penalising mistakes
            the student made earlier instead of only separating the teacher from the current student. Replayed pairs
            only train the discriminator; the rewards are the current completions'. Saved in checkpoints. 0 = off
            (the paper).
        discriminator_replay_ratio (`float`, *optional*, defaults to `0.5`):
            Replayed pairs per discriminator update, as a fraction of the update's current student completions (used
            when discriminator_replay_buffer_size > 0).
        discriminator_replay_mode (`str`, *optional*, defaults to `"add"`):
            How replayed pairs enter each discriminator update. 'add': on top of the current pairs (more student
            negatives per update). 'replace': round(discriminator_replay_ratio x n) of the n current completions, drawn
            at random (seeded, saved with the buffer), are left out of the loss and the backward and the replayed pairs
            take their place, so the update back-propagates as many student sequences and has as many pairs in its loss
            as without replay (persistent negatives, arXiv 2609.30864); extra are the replayed teacher sequences'
            forwards and a no-grad scoring of the left-out completions, which still get their scores as rewards. Needs
            discriminator_replay_ratio < 1.

        > Parameters that make the discriminator small (LoRA / QLoRA / shared base; TRL ModelConfig's names)

        discriminator_use_peft (`bool`, *optional*, defaults to `False`):
            Train the discriminator with LoRA on its backbone; the value head `score` is trained in full (PEFT
            modules_to_save, task SEQ_CLS). Saved as an adapter in discriminator/, merged in discriminator_merged/ by
            the final save.
        discriminator_lora_r (`int`, *optional*, defaults to `16`):
            Discriminator LoRA R value.
        discriminator_lora_alpha (`int`, *optional*, defaults to `32`):
            Discriminator LoRA alpha.
        discriminator_lora_dropout (`float`, *optional*, defaults to `0.05`):
            Discriminator LoRA dropout.
        discriminator_lora_target_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Discriminator LoRA target modules; None = PEFT's default for the architecture (all-linear where PEFT has
            none, e.g. GPT-OSS, Qwen3-MoE).
        discriminator_load_in_4bit (`bool`, *optional*, defaults to `False`):
            QLoRA discriminator: its frozen base in 4-bit through bitsandbytes (needs discriminator_use_peft and `pip
            install 'gad_trl[quantization]'`).
        discriminator_bnb_4bit_quant_type (`str`, *optional*, defaults to `"nf4"`):
            4-bit quantization type of the discriminator.
        discriminator_use_bnb_nested_quant (`bool`, *optional*, defaults to `False`):
            Nested (double) quantization of the 4-bit discriminator.
        discriminator_shared_base (`bool`, *optional*, defaults to `False`):
            With a LoRA student (`use_peft`): the discriminator is a second LoRA adapter (discriminator_lora_*
            fields) plus its own value head on the student's frozen base, so one copy of the base serves the
            student, the reference (adapters off) and the discriminator. A 4-bit student (`load_in_4bit`) makes it
            QLoRA. One training process only.

        > Parameters that control the discriminator loss (docs/algorithm.md, "Discriminator losses")

        discriminator_loss_type (`str`, *optional*, defaults to `"bradley_terry"`):
            Discriminator loss: `bradley_terry` (the paper's), `hinge`, `two_sided_hinge` or `balanced`
            (docs/algorithm.md, "Discriminator losses").
        discriminator_margin (`float`, *optional*, defaults to `1.0`):
            m: lower margin on d = t - s (hinge variants).
        discriminator_upper_margin (`float`, *optional*, defaults to `5.0`):
            M: upper margin on d (two_sided_hinge).
        discriminator_temperature (`float`, *optional*, defaults to `2.0`):
            T of the soft BCE term: -log sigmoid(clip(d/T)).
        discriminator_clip (`float`, *optional*, defaults to `10.0`):
            Clip of d/T in the soft BCE term.
        discriminator_hinge_bce_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the soft BCE term (hinge variants).
        discriminator_balanced_bce_weight (`float`, *optional*, defaults to `1.5`):
            balanced: weight of the soft BCE term.
        discriminator_score_reg_weight (`float`, *optional*, defaults to `0.005`):
            balanced: weight of mean(t^2) + mean(s^2).
        discriminator_overconfidence_weight (`float`, *optional*, defaults to `0.5`):
            balanced: weight of relu(d - overconfidence_margin)^2.
        discriminator_overconfidence_margin (`float`, *optional*, defaults to `1.5`):
            balanced: margin of the penalty.

        > Parameters that control generation through a vLLM server (`vllm_mode="server"`)

        vllm_weight_sync (`str`, *optional*, defaults to `"nccl"`):
            How updated student weights reach a vLLM server (vllm_mode='server'): 'nccl' (TRL's default, CUDA),
            'reload' (save to vllm_weight_sync_dir, then the server's reload_weights RPC; CPU-friendly) or 'lora' (a
            LoRA student only: each sync saves just its adapter to vllm_weight_sync_dir and the server, started with
            `gad-trl vllm-serve --weight-sync lora`, serves it on its unchanged base; a 4-bit base works). With
            vllm_mode='colocate': 'nccl' = TRL's own sync, 'reload' = vLLM's layer-wise reload in memory (required on
            CPU, docs/vllm.md), 'lora' = the in-process engine serves the adapter.
        vllm_weight_sync_dir (`str` or `None`, *optional*, defaults to `None`):
            Directory shared with the server for 'reload' and 'lora' sync; None = <output_dir>/_vllm_weights. The
            'reload' copy of the weights is deleted when train() ends.
        vllm_request_timeout (`float` or `None`, *optional*, defaults to `1800.0`):
            Seconds one request to the vLLM server (a generation batch, a weight sync) may wait for its answer
            before the step fails with VLLMServerError; None = wait forever (TRL's behaviour). It guards against a
            server that is alive but hung: raise it if one generation batch really takes longer.
        async_generation (`bool`, *optional*, defaults to `False`):
            One-step-off generation (vllm_mode='server'): the next batch's prompts go to the vLLM server in the
            background while the discriminator and the policy update on the current batch, whose completions were
            sampled one optimizer step earlier (corrected by TRL's vllm_importance_sampling_correction). Logged as
            async_generation/staleness; off = the synchronous loop, numbers unchanged.

        > Parameters that bound the student's tool calls (with `tools` / `environment_factory`)

        tool_timeout (`float`, *optional*, defaults to `30.0`):
            Seconds to wait for one tool call during a rollout (as generate-teacher --tool_timeout); past it the
            model gets an error result, as for a tool that raises, and the rollout carries on (counted in
            tools/timeouts). The call's thread cannot be killed and keeps running in the background.
        max_tool_result_chars (`int`, *optional*, defaults to `20000`):
            Longest tool result (characters) put back into a rollout (as generate-teacher --max_tool_result_chars);
            a longer one is cut, with a note giving its full length (counted in tools/cut_results).

        > Parameters that control the Hub upload

        discriminator_hub_model_id (`str` or `None`, *optional*, defaults to `None`):
            Hub repo for the discriminator. None = the `discriminator/` sub-folder of the student's repo.

        > Parameters that control monitoring (docs/algorithm.md, "Monitoring")

        discriminator_heldout_size (`int`, *optional*, defaults to `0`):
            Prompts of the eval set drawn once (with `seed`), each with its teacher response and one student
            response sampled once; every evaluation then logs the discriminator's accuracy on these fixed triples
            under `eval_discriminator_heldout/`. 0 = off. The triples are cached in
            <output_dir>/heldout_triples.jsonl, which only a run resumed from a checkpoint reuses (with the same
            settings; other settings are an error).
        discriminator_max_nonfinite_updates (`int`, *optional*, defaults to `3`):
            A discriminator update whose loss, scores or gradient norm is NaN/inf is skipped (counted in
            `discriminator/nonfinite_skipped`), and so is a student update whose loss or gradient norm is
            (`student/nonfinite_skipped`; not under DeepSpeed, which steps inside its backward); training stops with
            an error after this many skips in a row of either model.
        warn_on_unhealthy_metrics (`bool`, *optional*, defaults to `True`):
            Log a warning when discriminator metrics leave the healthy ranges.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS + ["discriminator_init_kwargs"]

    # Paper defaults that differ from GRPOConfig's.
    learning_rate: float = field(default=1e-6, metadata={"help": "Student (policy) learning rate. Paper: 1e-6."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature of the student. Paper: 0.8."})
    beta: float = field(
        default=1e-3,
        metadata={"help": "KL coefficient to the reference model (TRL's k3 estimator). Paper: 1e-3. 0 = no reference "
                  "model."},
    )
    max_grad_norm: float = field(
        default=0.2,
        metadata={"help": "Gradient clipping of the student (and of the discriminator, unless "
                  "discriminator_max_grad_norm is set). Paper: 0.2."},
    )

    # Schedule
    critic_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps at the start where only the discriminator learns; the student is frozen (learning "
            "rate 0, no policy loss). Paper: 10. A warning when it covers the whole run (>= max_steps)."
        },
    )
    sft_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Optimizer steps after `critic_warmup_steps` where the student is trained by cross-entropy on the "
            "teacher responses (instead of GRPO) while the discriminator keeps learning."
        },
    )
    sft_loss_coef: float = field(
        default=1.0,
        metadata={
            "help": "After the warm-ups, add this weight times the student's cross-entropy on the teacher responses of "
            "the batch to the GRPO loss (as InstructGPT's PPO-ptx mixes its pre-training loss in), so the policy keeps "
            "what the SFT warm-up taught while it follows the discriminator. 1.0 won the CPU quality suite's mean "
            "(README); 0 = pure GRPO on discriminator rewards (the paper)."
        },
    )

    # Data
    teacher_response_column: str = field(
        default="teacher_response", metadata={"help": "Dataset column holding the teacher's response text."}
    )
    teacher_special_tokens: str = field(
        default="text",
        metadata={
            "help": "What a special-token string inside a teacher response (a literal `<|im_end|>`) becomes: `text` "
            "encodes it as the plain text it is (never as a control token, which would be a tell for the "
            "discriminator); `error` refuses such rows at data preparation, naming the row.",
            "choices": ["text", "error"],
        },
    )

    # Discriminator model and optimisation
    discriminator_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Discriminator backbone; None = initialise from the student's weights."}
    )
    discriminator_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for the discriminator's from_pretrained; defaults to model_init_kwargs."},
    )
    discriminator_learning_rate: float = field(default=1e-6, metadata={"help": "Discriminator learning rate."})
    discriminator_weight_decay: float = field(default=0.0, metadata={"help": "Discriminator AdamW weight decay."})
    discriminator_adam_beta1: float = field(default=0.9, metadata={"help": "Discriminator AdamW beta1."})
    discriminator_adam_beta2: float = field(default=0.999, metadata={"help": "Discriminator AdamW beta2."})
    discriminator_lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "Discriminator LR schedule (transformers' get_scheduler)."}
    )
    discriminator_warmup_steps: int = field(
        default=0, metadata={"help": "Discriminator LR warm-up, in discriminator updates (one per generation batch)."}
    )
    discriminator_max_grad_norm: float | None = field(
        default=None, metadata={"help": "Gradient clipping of the discriminator; None = max_grad_norm."}
    )
    discriminator_mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per discriminator forward/backward. None = one forward over the generation batch "
            "whose detached scores are the rewards; a number bounds memory at the cost of a second, no-grad pass."
        },
    )
    discriminator_gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Gradient checkpointing in the discriminator backbone. None = follow `gradient_checkpointing`: "
            "without it the discriminator's fwd+bwd over every completion dominates peak memory (benchmarks/)."
        },
    )
    discriminator_sharding: str = field(
        default="auto",
        metadata={
            "help": "How the discriminator is laid out over processes. 'auto': sharded with torch FSDP2 when the "
            "launcher shards the student (FSDP, DeepSpeed ZeRO-3), replicated otherwise. 'fsdp2': always sharded (one "
            "`fully_shard` unit per decoder layer + the root; float32 master weights and optimizer states, bf16/fp16 "
            "compute when `bf16`/`fp16` is on); needs a distributed launch, at world size 1 it splits nothing but "
            "keeps the float32 master weights. 'none': a full copy with its own AdamW on every process.",
            "choices": ["auto", "none", "fsdp2"],
        },
    )

    # Discriminator PEFT (LoRA / QLoRA / shared base): TRL ModelConfig's fields with a `discriminator_` prefix
    discriminator_use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train the discriminator with LoRA on its backbone; the value head `score` is trained in full "
            "(PEFT modules_to_save, task SEQ_CLS). Saved as an adapter in discriminator/, merged in "
            "discriminator_merged/ by the final save."
        },
    )
    discriminator_lora_r: int = field(default=16, metadata={"help": "Discriminator LoRA R value."})
    discriminator_lora_alpha: int = field(default=32, metadata={"help": "Discriminator LoRA alpha."})
    discriminator_lora_dropout: float = field(default=0.05, metadata={"help": "Discriminator LoRA dropout."})
    discriminator_lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Discriminator LoRA target modules; None = PEFT's default for the architecture (all-linear "
                          "where PEFT has none, e.g. GPT-OSS, Qwen3-MoE)."},
    )
    discriminator_load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "QLoRA discriminator: its frozen base in 4-bit through bitsandbytes (needs discriminator_use_peft "
            "and `pip install 'gad_trl[quantization]'`)."
        },
    )
    discriminator_bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantization type of the discriminator.", "choices": ["fp4", "nf4"]}
    )
    discriminator_use_bnb_nested_quant: bool = field(
        default=False, metadata={"help": "Nested (double) quantization of the 4-bit discriminator."}
    )
    discriminator_shared_base: bool = field(
        default=False,
        metadata={
            "help": "With a LoRA student (`use_peft`): the discriminator is a second LoRA adapter (discriminator_lora_* "
            "fields) plus its own value head on the student's frozen base, so one copy of the base serves the "
            "student, the reference (adapters off) and the discriminator. A 4-bit student (`load_in_4bit`) makes "
            "it QLoRA. One training process only."
        },
    )
    discriminator_pooling: str | None = field(
        default=None,
        metadata={
            "help": "How the discriminator turns a sequence into a score: 'last' = the value head at the last response "
            "token (paper), 'mean' = the value head on the mean hidden state of the response tokens. Saved in the "
            "discriminator's config.json, so a reloaded discriminator scores the same way. None = the loaded "
            "discriminator's saved choice ('last' for a new one).",
            "choices": ["last", "mean"],
        },
    )
    discriminator_length_penalty: float = field(
        default=0.0,
        metadata={
            "help": "beta of the length-debiased reward: score - beta * log1p(response tokens), on the reward only "
            "(the discriminator's loss reads the raw scores). Saved in the discriminator's config.json. 0 = the "
            "paper's raw score."
        },
    )
    discriminator_score_clip: float | None = field(
        default=None,
        metadata={
            "help": "Clip the reward (after the length penalty) to [-c, c]; on the reward only, saved in the "
            "discriminator's config.json. None = no clipping (paper)."
        },
    )
    discriminator_freeze_after_step: int | None = field(
        default=None,
        metadata={
            "help": "Stop updating the discriminator from this global step on (it still scores and logs its "
            "metrics): the paper's frozen-discriminator ablation, e.g. critic_warmup_steps + sft_warmup_steps. "
            "None = co-trained at every step (GAD)."
        },
    )
    discriminator_num_iterations: int = field(
        default=1,
        metadata={
            "help": "Discriminator optimizer steps per generation batch, all on the same pairs (the GAN critic's "
            "n_critic; GRPO's num_iterations is the student's). The rewards are the scores from before the first; "
            "the logged metrics are the first step's. 1 = the paper."
        },
    )
    discriminator_replay_buffer_size: int = field(
        default=0,
        metadata={
            "help": "Keep a uniform sample (reservoir) of this many past student completions, from every step so far, "
            "and mix some into each discriminator update as extra negatives, so the discriminator keeps penalising "
            "mistakes the student made earlier instead of only separating the teacher from the current student. "
            "Replayed pairs only train the discriminator; the rewards are the current completions'. Saved in "
            "checkpoints. 0 = off (the paper)."
        },
    )
    discriminator_replay_ratio: float = field(
        default=0.5,
        metadata={
            "help": "Replayed pairs per discriminator update, as a fraction of the update's current student "
            "completions (used when discriminator_replay_buffer_size > 0)."
        },
    )
    discriminator_replay_mode: str = field(
        default="add",
        metadata={
            "help": "How replayed pairs enter each discriminator update. 'add': on top of the current pairs (more "
            "student negatives per update). 'replace': round(discriminator_replay_ratio x n) of the n current "
            "completions, drawn at random (seeded, saved with the buffer), are left out of the loss and the backward "
            "and the replayed pairs take their place, so the update back-propagates as many student sequences and has "
            "as many pairs in its loss as without replay (persistent negatives, arXiv 2609.30864); extra are the "
            "replayed teacher sequences' forwards and a no-grad scoring of the left-out completions, which still get "
            "their scores as rewards. Needs discriminator_replay_ratio < 1.",
            "choices": ["add", "replace"],
        },
    )

    # Discriminator loss
    discriminator_loss_type: str = field(
        default="bradley_terry",
        metadata={
            "help": "Discriminator loss: `bradley_terry` (the paper's), `hinge`, `two_sided_hinge` or `balanced` "
            "(docs/algorithm.md, \"Discriminator losses\").",
            "choices": list(LOSS_TYPES),
        },
    )
    discriminator_margin: float = field(
        default=DEFAULT_CONSTANTS["margin"], metadata={"help": "m: lower margin on d = t - s (hinge variants)."}
    )
    discriminator_upper_margin: float = field(
        default=DEFAULT_CONSTANTS["upper_margin"], metadata={"help": "M: upper margin on d (two_sided_hinge)."}
    )
    discriminator_temperature: float = field(
        default=DEFAULT_CONSTANTS["temperature"], metadata={"help": "T of the soft BCE term: -log sigmoid(clip(d/T))."}
    )
    discriminator_clip: float = field(
        default=DEFAULT_CONSTANTS["clip"], metadata={"help": "Clip of d/T in the soft BCE term."}
    )
    discriminator_hinge_bce_weight: float = field(
        default=DEFAULT_CONSTANTS["hinge_bce_weight"], metadata={"help": "Weight of the soft BCE term (hinge variants)."}
    )
    discriminator_balanced_bce_weight: float = field(
        default=DEFAULT_CONSTANTS["balanced_bce_weight"], metadata={"help": "balanced: weight of the soft BCE term."}
    )
    discriminator_score_reg_weight: float = field(
        default=DEFAULT_CONSTANTS["score_reg_weight"], metadata={"help": "balanced: weight of mean(t^2) + mean(s^2)."}
    )
    discriminator_overconfidence_weight: float = field(
        default=DEFAULT_CONSTANTS["overconfidence_weight"],
        metadata={"help": "balanced: weight of relu(d - overconfidence_margin)^2."},
    )
    discriminator_overconfidence_margin: float = field(
        default=DEFAULT_CONSTANTS["overconfidence_margin"], metadata={"help": "balanced: margin of the penalty."}
    )

    # vLLM server mode
    vllm_weight_sync: str = field(
        default="nccl",
        metadata={
            "help": "How updated student weights reach a vLLM server (vllm_mode='server'): 'nccl' (TRL's default, "
            "CUDA), 'reload' (save to vllm_weight_sync_dir, then the server's reload_weights RPC; CPU-friendly) or "
            "'lora' (a LoRA student only: each sync saves just its adapter to vllm_weight_sync_dir and the server, "
            "started with `gad-trl vllm-serve --weight-sync lora`, serves it on its unchanged base; a 4-bit base "
            "works). With vllm_mode='colocate': 'nccl' = TRL's own sync, 'reload' = vLLM's layer-wise reload in "
            "memory (required on CPU, docs/vllm.md), 'lora' = the in-process engine serves the adapter.",
            "choices": ["nccl", "reload", "lora"],
        },
    )
    vllm_weight_sync_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory shared with the server for 'reload' and 'lora' sync; None = <output_dir>/_vllm_weights. "
            "The 'reload' copy of the weights is deleted when train() ends."
        },
    )
    vllm_request_timeout: float | None = field(
        default=1800.0,
        metadata={
            "help": "Seconds one request to the vLLM server (a generation batch, a weight sync) may wait for its "
            "answer before the step fails with VLLMServerError; None = wait forever (TRL's behaviour). It guards "
            "against a server that is alive but hung: raise it if one generation batch really takes longer."
        },
    )
    async_generation: bool = field(
        default=False,
        metadata={
            "help": "One-step-off generation (vllm_mode='server'): the next batch's prompts go to the vLLM server in "
            "the background while the discriminator and the policy update on the current batch, whose completions "
            "were sampled one optimizer step earlier (corrected by TRL's vllm_importance_sampling_correction). "
            "Logged as async_generation/staleness; off = the synchronous loop, numbers unchanged."
        },
    )

    # The student's tool calls (gad_trl.workflow.tool_calling.ToolLimits, the limits generate-teacher applies)
    tool_timeout: float = field(
        default=DEFAULT_TOOL_TIMEOUT,
        metadata={
            "help": "Seconds to wait for one tool call during a rollout (as generate-teacher --tool_timeout); past it "
            "the model gets an error result, as for a tool that raises, and the rollout carries on (counted in "
            "tools/timeouts). The call's thread cannot be killed and keeps running in the background."
        },
    )
    max_tool_result_chars: int = field(
        default=DEFAULT_MAX_TOOL_RESULT_CHARS,
        metadata={
            "help": "Longest tool result (characters) put back into a rollout (as generate-teacher "
            "--max_tool_result_chars); a longer one is cut, with a note giving its full length (counted in "
            "tools/cut_results)."
        },
    )

    # Hub
    discriminator_hub_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub repo for the discriminator. None = the `discriminator/` sub-folder of the student's repo."
        },
    )

    # Fixed held-out evaluation of the discriminator (docs/algorithm.md, "Monitoring")
    discriminator_heldout_size: int = field(
        default=0,
        metadata={
            "help": "Prompts of the eval set drawn once (with `seed`), each with its teacher response and one student "
            "response sampled once; every evaluation then logs the discriminator's accuracy on these fixed triples "
            "under `eval_discriminator_heldout/`. 0 = off. The triples are cached in <output_dir>/heldout_triples.jsonl, "
            "which only a run resumed from a checkpoint reuses (with the same settings; other settings are an error)."
        },
    )

    # Non-finite guard (gad_trl.guards)
    discriminator_max_nonfinite_updates: int = field(
        default=3,
        metadata={
            "help": "A discriminator update whose loss, scores or gradient norm is NaN/inf is skipped (counted in "
            "`discriminator/nonfinite_skipped`), and so is a student update whose loss or gradient norm is "
            "(`student/nonfinite_skipped`; not under DeepSpeed, which steps inside its backward); training stops with "
            "an error after this many skips in a row of either model."
        },
    )

    # Health checks (docs/algorithm.md, "Monitoring"): warnings, never hard stops.
    warn_on_unhealthy_metrics: bool = field(
        default=True, metadata={"help": "Log a warning when discriminator metrics leave the healthy ranges."}
    )

    def __post_init__(self):
        default_bf16_where_supported(self)
        super().__post_init__()
        check_choices(self)
        if not self.discriminator_learning_rate >= 0:
            raise ValueError(
                f"discriminator_learning_rate must be >= 0 (0 keeps the discriminator fixed), got "
                f"{self.discriminator_learning_rate}."
            )
        if self.discriminator_loss_type not in LOSS_TYPES:
            raise ValueError(
                f"discriminator_loss_type={self.discriminator_loss_type!r} is not supported; "
                f"choose one of {', '.join(LOSS_TYPES)}."
            )
        for name in ("critic_warmup_steps", "sft_warmup_steps", "discriminator_warmup_steps", "discriminator_heldout_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length must be a positive number of tokens, got {self.max_completion_length}: the "
                "student could not write anything. Pick one near the teacher's lengths (gad-trl analyze-lengths)."
            )
        if self.discriminator_max_nonfinite_updates < 1:
            raise ValueError(
                f"discriminator_max_nonfinite_updates must be >= 1, got {self.discriminator_max_nonfinite_updates}."
            )
        if 0 < self.max_steps <= self.critic_warmup_steps:
            import warnings

            warnings.warn(
                f"critic_warmup_steps={self.critic_warmup_steps} >= max_steps={self.max_steps}: the student stays "
                "frozen for the whole run (only the discriminator learns). Lower critic_warmup_steps or raise "
                "max_steps to distil anything.",
                stacklevel=3,
            )
        if self.vllm_request_timeout is not None and self.vllm_request_timeout <= 0:
            raise ValueError(
                f"vllm_request_timeout must be a positive number of seconds or None, got {self.vllm_request_timeout}."
            )
        if not self.tool_timeout > 0:
            raise ValueError(f"tool_timeout must be > 0 seconds, got {self.tool_timeout}.")
        if self.max_tool_result_chars < 1:
            raise ValueError(f"max_tool_result_chars must be >= 1, got {self.max_tool_result_chars}.")
        if self.discriminator_pooling not in (None, "last", "mean"):
            raise ValueError(f"discriminator_pooling must be 'last', 'mean' or None, got {self.discriminator_pooling!r}.")
        import math

        if not (math.isfinite(self.discriminator_length_penalty) and self.discriminator_length_penalty >= 0):
            raise ValueError(
                f"discriminator_length_penalty must be a finite number >= 0 (0 = raw scores), got "
                f"{self.discriminator_length_penalty}."
            )
        if self.discriminator_score_clip is not None and not (
                math.isfinite(self.discriminator_score_clip) and self.discriminator_score_clip > 0):
            raise ValueError(
                f"discriminator_score_clip must be a positive number or None (no clipping), got "
                f"{self.discriminator_score_clip}."
            )
        if self.discriminator_freeze_after_step is not None and self.discriminator_freeze_after_step < 0:
            raise ValueError(
                f"discriminator_freeze_after_step must be >= 0 or None, got {self.discriminator_freeze_after_step}."
            )
        if not self.sft_loss_coef >= 0:
            raise ValueError(f"sft_loss_coef must be >= 0 (0 = pure GRPO after the warm-ups), got {self.sft_loss_coef}.")
        if self.discriminator_num_iterations < 1:
            raise ValueError(
                f"discriminator_num_iterations must be >= 1 (optimizer steps per batch), got {self.discriminator_num_iterations}."
            )
        if self.discriminator_replay_buffer_size < 0:
            raise ValueError(
                f"discriminator_replay_buffer_size must be >= 0 (0 = no replay), got {self.discriminator_replay_buffer_size}."
            )
        if self.discriminator_replay_buffer_size > 0 and not self.discriminator_replay_ratio > 0:
            raise ValueError(
                f"discriminator_replay_ratio must be > 0 when discriminator_replay_buffer_size is set, got "
                f"{self.discriminator_replay_ratio}. Set discriminator_replay_buffer_size=0 to turn replay off."
            )
        if self.discriminator_replay_mode not in ("add", "replace"):
            raise ValueError(
                f"discriminator_replay_mode must be 'add' or 'replace', got {self.discriminator_replay_mode!r}."
            )
        if (self.discriminator_replay_mode == "replace" and self.discriminator_replay_buffer_size > 0
                and self.discriminator_replay_ratio >= 1):
            raise ValueError(
                "discriminator_replay_mode='replace' swaps discriminator_replay_ratio x n of the n current "
                f"completions for replayed ones, so discriminator_replay_ratio={self.discriminator_replay_ratio} "
                "would leave no current completion to train on. Set discriminator_replay_ratio below 1 (e.g. 0.5), "
                "or use discriminator_replay_mode='add' to replay that many pairs on top of the current ones."
            )
        if self.discriminator_mini_batch_size is not None and self.discriminator_mini_batch_size < 1:
            raise ValueError(
                f"discriminator_mini_batch_size must be a positive integer or None, got {self.discriminator_mini_batch_size}."
            )
        if self.discriminator_temperature <= 0:
            raise ValueError(f"discriminator_temperature must be > 0, got {self.discriminator_temperature}.")
        if self.discriminator_loss_type == "two_sided_hinge" and self.discriminator_upper_margin <= self.discriminator_margin:
            raise ValueError(
                "two_sided_hinge needs discriminator_upper_margin > discriminator_margin "
                f"(got M={self.discriminator_upper_margin}, m={self.discriminator_margin})."
            )
        if self.discriminator_sharding not in ("auto", "none", "fsdp2"):
            raise ValueError(
                f"discriminator_sharding must be 'auto', 'none' or 'fsdp2', got {self.discriminator_sharding!r}."
            )
        if self.vllm_weight_sync not in ("nccl", "reload", "lora"):
            raise ValueError(f"vllm_weight_sync must be 'nccl', 'reload' or 'lora', got {self.vllm_weight_sync!r}.")
        if self.vllm_weight_sync == "lora" and self.use_vllm and self.vllm_mode == "colocate" \
                and self.vllm_enable_sleep_mode:
            raise ValueError(
                "vllm_weight_sync='lora' with vllm_mode='colocate' cannot use vllm_enable_sleep_mode: sleep discards "
                "the engine's base weights, which an adapter-only sync never sends back. Turn vllm_enable_sleep_mode "
                "off, or use vllm_weight_sync='reload'."
            )
        if self.async_generation:
            if not (self.use_vllm and self.vllm_mode == "server"):
                raise ValueError(
                    "async_generation overlaps generation on a vLLM server with training: it needs use_vllm=True and "
                    f"vllm_mode='server' (got use_vllm={self.use_vllm}, vllm_mode={self.vllm_mode!r}). Start a "
                    "server (`gad-trl vllm-serve --model ...`) or set async_generation=False."
                )
            if not self.vllm_importance_sampling_correction:
                raise ValueError(
                    "async_generation trains on completions sampled one optimizer step earlier; TRL's "
                    "vllm_importance_sampling_correction corrects for that and must stay True (choose its form with "
                    "vllm_importance_sampling_mode, e.g. 'token_truncate')."
                )
        targets = self.discriminator_lora_target_modules
        if isinstance(targets, list) and len(targets) == 1:  # as TRL's ModelConfig: `--..._target_modules all-linear`
            self.discriminator_lora_target_modules = targets[0]
        from .discriminator.adapters import check_peft_fields

        check_peft_fields(self)
        if isinstance(self.discriminator_init_kwargs, str):
            import json

            self.discriminator_init_kwargs = json.loads(self.discriminator_init_kwargs)

    def discriminator_loss_constants(self) -> dict[str, float]:
        """The loss constants of `discriminator_loss`, read from the `discriminator_*` fields."""
        return {name: getattr(self, f"discriminator_{name}") for name in DEFAULT_CONSTANTS}


@redacting
@dataclass
class SeqKDConfig(SFTConfig):
    r"""
    Configuration class for the SeqKD baseline (`gad-trl seqkd`, TRL's `SFTTrainer` on the teacher responses): every
    [`~trl.SFTConfig`] field, plus the ones below.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `5e-6`):
            SeqKD learning rate. Paper: 5e-6.
        teacher_response_column (`str`, *optional*, defaults to `"teacher_response"`):
            Dataset column holding the teacher's response text (one answer, or a list of k: SeqKD trains on every
            one).
    """

    learning_rate: float = field(default=5e-6, metadata={"help": "SeqKD learning rate. Paper: 5e-6."})
    teacher_response_column: str = field(
        default="teacher_response",
        metadata={"help": "Dataset column holding the teacher's response text (one answer, or a list of k: SeqKD "
                  "trains on every one)."},
    )

    def __post_init__(self):
        default_bf16_where_supported(self)  # same rule as GADConfig
        super().__post_init__()


STAGES = ("gad", "seqkd", "soda")


@dataclass
class GADScriptArguments(ScriptArguments):
    r"""
    Script arguments of `gad-trl gad` and `gad-trl seqkd`: TRL's [`~trl.ScriptArguments`] (dataset_name,
    dataset_config, splits, streaming) plus the ones below. `dataset_name` is a Hub id, a local directory, or a
    `.parquet` / `.json` / `.jsonl` file (a `{split}` placeholder in a file path loads one file per split).

    Parameters:
        stage (`str` or `None`, *optional*, defaults to `None`):
            Which trainer a recipe is for: `gad` (GADTrainer) or `seqkd` (TRL's SFTTrainer on the teacher responses -
            the paper's SeqKD baseline and an optional first stage). Read by `gad-trl train` to pick the command;
            `gad-trl gad` / `gad-trl seqkd` refuse a recipe of the other stage.
        dataset_test_size (`float` or `None`, *optional*, defaults to `None`):
            Carve a held-out split of this fraction (or row count if >= 1) from the train split when the data set has
            no `dataset_test_split`. Used when `eval_strategy` is not `no`.
        max_prompt_length (`int` or `None`, *optional*, defaults to `None`):
            Drop rows whose chat-templated prompt is longer than this many tokens (as verl's filter_overlong_prompts;
            TRL 1.16's GRPOConfig has no prompt limit). Paper: 2048.
        max_train_samples (`int` or `None`, *optional*, defaults to `None`):
            Keep only the first N training rows (smoke tests, debugging).
        judge_eval_config (`str` or `None`, *optional*, defaults to `None`):
            Judge every saved checkpoint during training (`JudgeEvalCallback`): the path of a `gad-trl evaluate`
            YAML (its keys: dataset_name, judge_base_url, judge_model, student_max_tokens, ...). Each
            checkpoint-N/ gets eval_judge.json and the score is logged as eval_judge/score; pick the best
            afterwards with `gad-trl evaluate --pick_best`. Needs a save_strategy other than 'no'.
        reward_funcs (`list[str]` or `None`, *optional*, defaults to `None`):
            `gad-trl gad` only: rewards added next to the discriminator's (`GADTrainer(reward_funcs=...)`), as
            in TRL's `trl grpo`: the name of a reward in `trl.rewards` (`accuracy_reward`,
            `reasoning_accuracy_reward`, `think_format_reward`) or a dotted import path
            (`my_lib.rewards.custom_reward`, importable from the working directory). Weight the columns with
            `reward_weights` (the discriminator's first).
        reward_model_name_or_path (`str` or `None`, *optional*, defaults to `None`):
            `gad-trl gad` only: a reward model (Hub id or local path, `AutoModelForSequenceClassification`)
            added as a reward column after the discriminator's and before `reward_funcs`, as in TRL's `trl
            grpo`.
        tools (`list[str]` or `None`, *optional*, defaults to `None`):
            `gad-trl gad` only: Python functions the student may call during its rollouts (`GADTrainer(tools=...)`,
            TRL's tool calling), as import paths `module.function` or `module:function` (importable from the working
            directory). Each needs type hints and a Google-style docstring (TRL builds the tool schema from them).
            Teacher answers are then tool-using trajectories (docs/algorithm.md, "Agents and tools").
    """

    stage: str | None = field(
        default=None,
        metadata={
            "help": "Which trainer a recipe is for: `gad` (GADTrainer) or `seqkd` (TRL's SFTTrainer on the teacher "
            "responses - the paper's SeqKD baseline and an optional first stage). Read by `gad-trl train` to pick the "
            "command; `gad-trl gad` / `gad-trl seqkd` refuse a recipe of the other stage.",
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
    judge_eval_config: str | None = field(
        default=None,
        metadata={
            "help": "Judge every saved checkpoint during training (`JudgeEvalCallback`): the path of a `gad-trl evaluate` "
            "YAML (its keys: dataset_name, judge_base_url, judge_model, student_max_tokens, ...). Each "
            "checkpoint-N/ gets eval_judge.json and the score is logged as eval_judge/score; pick the best "
            "afterwards with `gad-trl evaluate --pick_best`. Needs a save_strategy other than 'no'."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "`gad-trl gad` only: rewards added next to the discriminator's (`GADTrainer(reward_funcs=...)`), as "
            "in TRL's `trl grpo`: the name of a reward in `trl.rewards` (`accuracy_reward`, "
            "`reasoning_accuracy_reward`, `think_format_reward`) or a dotted import path "
            "(`my_lib.rewards.custom_reward`, importable from the working directory). Weight the columns with "
            "`reward_weights` (the discriminator's first)."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "`gad-trl gad` only: a reward model (Hub id or local path, `AutoModelForSequenceClassification`) "
            "added as a reward column after the discriminator's and before `reward_funcs`, as in TRL's `trl "
            "grpo`."
        },
    )
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "`gad-trl gad` only: Python functions the student may call during its rollouts "
            "(`GADTrainer(tools=...)`, TRL's tool calling), as import paths `module.function` or `module:function` "
            "(importable from the working directory). Each needs type hints and a Google-style docstring (TRL builds "
            "the tool schema from them). Teacher answers are then tool-using trajectories (docs/algorithm.md, "
            "\"Agents and tools\")."
        },
    )


from trl import DPOConfig  # noqa: E402  (SODAConfig's base; kept next to the class it serves)


@redacting
@dataclass
class SODAConfig(DPOConfig):
    r"""
    Configuration class for the SODA baseline (`gad-trl soda`, arXiv 2604.03873): TRL's `DPOTrainer` on pairs whose
    `chosen` is the teacher's answer and whose `rejected` is a sample of the starting student, drawn once before
    training and cached (`gad_trl.baselines.soda`). Every [`~trl.DPOConfig`] field, plus the ones below. The DPO fields
    keep TRL's defaults (`beta` 0.1, `learning_rate` 1e-6, `loss_type` sigmoid): the SODA paper's hyper-parameters
    were not available to this implementation.

    Parameters:
        > Parameters that control the data

        teacher_response_column (`str`, *optional*, defaults to `"teacher_response"`):
            Dataset column holding the teacher's response text (one answer, or a list of k: one pair per answer, each
            with its own student sample).

        > Parameters that control the rejected samples (the starting student's answers)

        rejected_temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the student's rejected answers; 0 = greedy. 1.0 samples the student's own
            distribution, which is DPO's reference policy here.
        rejected_top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling of the rejected answers (top-k is off).
        rejected_max_new_tokens (`int`, *optional*, defaults to `512`):
            Longest rejected answer, in tokens; a longer one is cut there (and counted in a warning).
        rejected_seed (`int` or `None`, *optional*, defaults to `None`):
            Seed of the rejected samples; None = `seed`.
        rejected_max_attempts (`int`, *optional*, defaults to `3`):
            Draws of a sample that comes back empty before the run stops with an error naming its rows.
        rejected_batch_size (`int`, *optional*, defaults to `8`):
            Prompts per generation batch when sampling with transformers.
        rejected_cache (`str` or `None`, *optional*, defaults to `None`):
            JSONL file caching the rejected samples (resumable; a rerun reuses them). A cache drawn from another
            student or with other rejected_* settings is an error naming the differences. None =
            `<output_dir>/_soda_rejected.jsonl` (the leading `_` keeps it out of Hub uploads).
        rejected_base_url (`str` or `None`, *optional*, defaults to `None`):
            OpenAI-compatible endpoint of the starting student, a URL ending in /v1 (OpenAI:
            https://api.openai.com/v1; a vLLM server: http://HOST:PORT/v1). Sampled there (`gad-trl vllm-serve
            --model STUDENT`) instead of with transformers in the training process.
        rejected_model (`str` or `None`, *optional*, defaults to `None`):
            The student's name on that server; None = the server's only model.
        rejected_api_key_env (`str` or `None`, *optional*, defaults to `None`):
            Name of the environment variable holding the API key of the starting student's server (the key itself is
            never logged or saved). None: no key is sent (a local vLLM server).
        rejected_concurrency (`int`, *optional*, defaults to `8`):
            Requests in flight at once to that server.
        rejected_request_timeout (`float`, *optional*, defaults to `600.0`):
            Total seconds one request attempt may take (connecting, sending, waiting for and reading the whole answer,
            however slowly the server sends it); an attempt over it is abandoned, its connection closed, and retried
            like other timeouts (see the retries setting).
        rejected_max_retries (`int`, *optional*, defaults to `5`):
            Retries per request: 429 (honouring Retry-After), 5xx, timeouts, dropped connections and malformed
            answers; then the request is listed as failed.
    """

    teacher_response_column: str = field(
        default="teacher_response",
        metadata={"help": "Dataset column holding the teacher's response text (one answer, or a list of k: one pair "
                  "per answer, each with its own student sample)."},
    )
    rejected_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the student's rejected answers; 0 = greedy. 1.0 samples the "
                  "student's own distribution, which is DPO's reference policy here."},
    )
    rejected_top_p: float = field(
        default=1.0, metadata={"help": "Nucleus sampling of the rejected answers (top-k is off)."}
    )
    rejected_max_new_tokens: int = field(
        default=512,
        metadata={"help": "Longest rejected answer, in tokens; a longer one is cut there (and counted in a warning)."},
    )
    rejected_seed: int | None = field(
        default=None, metadata={"help": "Seed of the rejected samples; None = `seed`."}
    )
    rejected_max_attempts: int = field(
        default=3,
        metadata={"help": "Draws of a sample that comes back empty before the run stops with an error naming its "
                  "rows."},
    )
    rejected_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generation batch when sampling with transformers."}
    )
    rejected_cache: str | None = field(
        default=None,
        metadata={"help": "JSONL file caching the rejected samples (resumable; a rerun reuses them). A cache drawn "
                  "from another student or with other rejected_* settings is an error naming the differences. None = "
                  "<output_dir>/_soda_rejected.jsonl (the leading `_` keeps it out of Hub uploads)."},
    )
    rejected_base_url: str | None = base_url_field(
        "the starting student", note="Sampled there (`gad-trl vllm-serve --model STUDENT`) instead of with transformers "
        "in the training process.")
    rejected_model: str | None = field(
        default=None, metadata={"help": "The student's name on that server; None = the server's only model."}
    )
    rejected_api_key_env: str | None = api_key_env_field("the starting student's server", default=None)
    rejected_concurrency: int = field(
        default=8, metadata={"help": "Requests in flight at once to that server."}
    )
    rejected_request_timeout: float = request_timeout_field()
    rejected_max_retries: int = max_retries_field()

    def rejected_endpoint(self) -> Endpoint:
        """The starting student's server (`gad_trl.workflow.endpoint`), checked."""
        return Endpoint(self.rejected_base_url, self.rejected_api_key_env, self.rejected_request_timeout,
                        self.rejected_max_retries, prefix="rejected_").check()

    def __post_init__(self):
        default_bf16_where_supported(self)  # same rule as GADConfig
        super().__post_init__()
        import math

        if not (math.isfinite(self.rejected_temperature) and self.rejected_temperature >= 0):
            raise ValueError(f"rejected_temperature must be a number >= 0 (0 = greedy), got {self.rejected_temperature}.")
        if not 0 < self.rejected_top_p <= 1:
            raise ValueError(f"rejected_top_p must be in (0, 1] (1 = off), got {self.rejected_top_p}.")
        for name in ("rejected_max_new_tokens", "rejected_max_attempts", "rejected_batch_size", "rejected_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        self.rejected_endpoint()  # checked: URL, key variable, timeout, retries
        for name in ("rejected_model", "rejected_api_key_env"):
            if getattr(self, name) is not None and self.rejected_base_url is None:
                raise ValueError(
                    f"{name} names the student on a server, but rejected_base_url is not set: set rejected_base_url "
                    f"to sample from that server, or remove {name} to sample with transformers."
                )
        if self.max_length is not None and self.rejected_max_new_tokens >= self.max_length:
            import warnings

            warnings.warn(
                f"rejected_max_new_tokens={self.rejected_max_new_tokens} >= max_length={self.max_length}: DPO "
                "truncates prompt + answer to max_length, so the end of long rejected answers is never trained on.",
                stacklevel=3,
            )

    def rejected_cache_path(self) -> str:
        """`rejected_cache`, or `<output_dir>/_soda_rejected.jsonl` (the leading `_` keeps it out of Hub uploads)."""
        import os

        return self.rejected_cache or os.path.join(self.output_dir, "_soda_rejected.jsonl")

    def rejected_sampling_seed(self) -> int:
        return self.seed if self.rejected_seed is None else self.rejected_seed
