"""`GADTrainer`: TRL's `GRPOTrainer` whose reward is a discriminator trained jointly, every step (docs/algorithm.md)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AutoTokenizer, PreTrainedModel, TrainerCallback
from transformers.utils import logging
from trl import GRPOTrainer
from trl.extras.profiling import profiling_decorator

from .config import GADConfig
from .data import check_teacher_tools, prepare_gad_dataset
from .discriminator.component import DISCRIMINATOR_DIR, Discriminator, load_discriminator_model
from .discriminator.inputs import DiscriminatorBatch, InputEncoder
from .discriminator.model import pad_right
from .guards import NonFiniteGuard, all_finite, finite_on_every_process, nonfinite_details, student_divergence_hint
from .health import HealthMonitor
from .hub import CITATION, PAPER_ID, PAPER_TITLE

logger = logging.get_logger(__name__)

PHASE_CRITIC_WARMUP, PHASE_SFT_WARMUP, PHASE_GAD = "critic_warmup", "sft_warmup", "gad"
_PHASE_IDS = {PHASE_CRITIC_WARMUP: 0, PHASE_SFT_WARMUP: 1, PHASE_GAD: 2}


class DiscriminatorReward:
    """The discriminator's reward column among `GRPOTrainer`'s reward functions (named `discriminator`, so TRL logs
    `rewards/discriminator/*`). `GADTrainer._calculate_rewards` runs the discriminator step first and hands this
    column the scores of the local completions; TRL then calls it with any extra `reward_funcs` and combines the
    columns with `reward_weights` / `multi_objective_aggregation`."""

    __name__ = "discriminator"

    def __init__(self):
        self.scores: list[float] | None = None

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        scores, self.scores = self.scores, None
        if scores is None or len(scores) != len(prompts):
            raise RuntimeError(
                "The discriminator reward column was called without this batch's scores; GADTrainer._calculate_rewards "
                "sets them before TRL calls the reward functions."
            )
        return scores


@dataclass
class _BatchInFlight:
    """The generation batch in flight, handed between TRL's hooks: `_generate` sets the prompt ids the completions
    continue and their tool masks (0 on tool-result tokens; None without tools), `_calculate_rewards` the
    discriminator's batch, whose teacher targets `_generate_and_score_completions` attaches for the SFT term."""

    prompt_ids: list[list[int]]
    tool_mask: list[list[int]] | None
    discriminator: DiscriminatorBatch | None = None


@contextmanager
def _upload_ignoring(pattern: str | None):
    """Within `Trainer.push_to_hub`, also leave `pattern` out of the student's upload (its ignore list is fixed)."""
    import transformers.trainer as hf_trainer

    if pattern is None:
        yield
        return
    get_api = hf_trainer.hf_api

    class _Api:
        def __getattr__(self, name):
            return getattr(get_api(), name)

        def upload_folder(self, *, ignore_patterns=None, **kwargs):
            return get_api().upload_folder(ignore_patterns=[*(ignore_patterns or []), pattern], **kwargs)

    hf_trainer.hf_api = _Api
    try:
        yield
    finally:
        hf_trainer.hf_api = get_api


def peft_zero3_checkpointing_problem(is_peft: bool, zero_stage: int | None, gradient_checkpointing: bool,
                                     sft_loss_coef: float) -> str | None:
    """Why a run would fail in DeepSpeed's backward, or None: a LoRA student under ZeRO-3 with gradient checkpointing
    and the teacher SFT term. TRL forces reentrant checkpointing for PEFT + ZeRO-3, and the GAD phase's loss sums two
    checkpointed forwards (policy and SFT), so one backward hands ZeRO-3 the same adapter parameters twice
    (`assert len(set(p.ds_id for p in params_in_bucket)) == len(params_in_bucket)`, seen with 2 CPU processes).
    TRL's reason for reentrant: huggingface/trl#2514, until deepspeedai/DeepSpeed#8130 is released."""
    if not (is_peft and zero_stage == 3 and gradient_checkpointing and sft_loss_coef > 0):
        return None
    return (
        "A LoRA student under DeepSpeed ZeRO-3 with gradient_checkpointing and the teacher SFT term "
        f"(sft_loss_coef={sft_loss_coef}) fails in DeepSpeed's backward at the first GAD step: TRL forces reentrant "
        "checkpointing for PEFT + ZeRO-3, and the policy and SFT forwards of one loss then hand ZeRO-3 the same "
        "adapter parameters twice. Set gradient_checkpointing=False (more activation memory) or sft_loss_coef=0 "
        "(no SFT term after the warm-ups), or train the LoRA student without ZeRO-3 (its trainable states are small: "
        "plain data parallel)."
    )


class GADTrainer(GRPOTrainer):
    """Generative Adversarial Distillation (Ye et al., arXiv 2511.10643) on top of TRL's `GRPOTrainer`.

    The student samples `num_generations` completions per prompt; a discriminator (causal-LM backbone + scalar head)
    scores them at their last token, and those scores are the GRPO rewards. In the same step the discriminator is
    updated on (teacher response, student completion) pairs with `discriminator_loss`. The teacher is never loaded:
    each row carries its response as text (`GADConfig.teacher_response_column`).

    Schedule, by `global_step`: `critic_warmup_steps` where only the discriminator learns, then `sft_warmup_steps`
    where the student is trained by cross-entropy on the teacher responses, then GRPO on discriminator rewards. The
    discriminator learns at every step of all three (unless `discriminator_freeze_after_step` stops it: an ablation).

    Args:
        model: student, as a Hub id / local path or a `PreTrainedModel` (causal LM).
        args: a `GADConfig`.
        train_dataset / eval_dataset: rows with a prompt (`prompt` messages or text, or verl's `content`) and the
            teacher response column.
        processing_class: tokenizer; loaded from the student when None.
        discriminator: a ready `AutoModelForSequenceClassification` (num_labels=1), or a
            `gad_trl.discriminator.value_head.GADValueHeadModel` for a decoder without one, a path / Hub id, or None to build
            it from `args.discriminator_model_name_or_path` or else from the student's weights.
        peft_config: a PEFT config for the student (as in GRPOTrainer).
        quantization_config: a `BitsAndBytesConfig` for a student loaded from a path (as in GRPOTrainer).
        callbacks, optimizers: as in `transformers.Trainer` (optimizers are the student's).
        reward_funcs: extra rewards next to the discriminator's (rule, verifier or format rewards; any reward
            `GRPOTrainer` accepts). The reward columns are `["discriminator", *reward_funcs]`, combined by TRL's
            `reward_weights` (one weight per column, the discriminator's first) and `multi_objective_aggregation`;
            each is logged as `rewards/<name>/mean`.
        reward_processing_classes: tokenizers of the extra reward models, as in `GRPOTrainer`.
        discriminator_processing_class: the discriminator's own tokenizer, when it is not the student's. None: the
            one saved with `discriminator` / `discriminator_model_name_or_path` if any, else the student's. With a
            tokenizer of its own the discriminator re-tokenises every prompt (its chat template) and response (the
            text) itself (`gad_trl.discriminator.tokenization`).
        tools, environment_factory, rollout_func: TRL's tool-calling rollouts, passed to `GRPOTrainer` as they are
            (tool results masked from the student's loss by TRL). The discriminator reads the whole trajectory
            (tool results as context) and scores its final token; teacher answers may then be trajectories
            (assistant turns with `tool_calls`, `tool` results, the final answer), laid out the same way
            (`gad_trl.discriminator.trajectory`; docs/algorithm.md, "Agents and tools").
    """

    _tag_names = ["trl", "gad", "grpo"]
    _name = "GAD"
    _paper = {"title": PAPER_TITLE, "id": PAPER_ID, "citation": CITATION}  # the card's "Citations" (TRL's hook)

    # Class-level defaults of the per-run state that TRL's hooks reach through GAD's overrides: a trainer built
    # without `__init__` (TRL's own tests: `object.__new__` plus the attributes the hook needs) then runs TRL's path.
    _one_step_off = None  # `__init__` sets it with `async_generation`
    _train_sampler = None
    _student_window_loss = None
    _batch = None  # the generation batch in flight (`_BatchInFlight`)

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: GADConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        discriminator: str | PreTrainedModel | None = None,
        peft_config=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        quantization_config=None,
        reward_funcs=None,
        reward_processing_classes=None,
        discriminator_processing_class=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = GADConfig(f"{str(name).rstrip('/').split('/')[-1]}-GAD")
        if not isinstance(args, GADConfig):
            raise TypeError(
                f"GADTrainer needs a GADConfig, got {type(args).__name__}. Build one with GADConfig(**your_args) "
                "(it accepts every GRPOConfig field)."
            )
        if train_dataset is None:
            # TRL's wording first (its tests match it), then why GAD needs one even with an environment_factory.
            raise ValueError(
                "`train_dataset` is required unless an `environment_factory` is provided. GADTrainer needs a "
                "train_dataset in every case (also with an environment_factory): its rows carry the teacher's "
                "responses the discriminator compares against. Pass train_dataset=Dataset.from_list(rows) with a "
                f"prompt and a '{args.teacher_response_column}' column."
            )
        extra_rewards = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs] if reward_funcs else []
        if args.reward_weights is not None and len(args.reward_weights) != 1 + len(extra_rewards):
            raise ValueError(
                f"Number of reward weights ({len(args.reward_weights)}) must match number of reward functions "
                f"({1 + len(extra_rewards)}): GAD's reward columns are the discriminator's and then the "
                f"{len(extra_rewards)} reward_funcs; give one weight per column, the discriminator's first."
            )
        if reward_processing_classes is not None and not isinstance(reward_processing_classes, list):
            reward_processing_classes = [reward_processing_classes]
        if reward_processing_classes is not None and len(reward_processing_classes) != len(extra_rewards):
            raise ValueError(
                f"The number of reward processing classes ({len(reward_processing_classes)}) must match the number of "
                f"reward functions ({len(extra_rewards)}). Give one per entry of reward_funcs (None for a reward "
                "function that needs none); the discriminator's own reward column takes none."
            )
        from .vllm.generation import check_colocate_weight_sync

        check_colocate_weight_sync(args)  # before anything loads, vLLM included
        from .preflight import check_model_source, check_reference_model_source
        from .run_folder import check_output_dir_writable

        check_model_source(model)
        check_reference_model_source(model, args.beta, peft_config)
        if args.should_save:
            check_output_dir_writable(args.output_dir)  # now, not at the first save hours later
        check_model_source(discriminator if isinstance(discriminator, str) else args.discriminator_model_name_or_path,
                           "discriminator_model_name_or_path")

        if processing_class is None:
            source = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        if getattr(processing_class, "pad_token", None) is None:
            processing_class.pad_token = processing_class.eos_token

        from .preflight import prompt_token_limit

        limit, limit_reason = prompt_token_limit(model, args)

        def prepare(dataset, split_name):
            return prepare_gad_dataset(dataset, args.teacher_response_column, processing_class, split_name,
                                       args.teacher_special_tokens, limit, limit_reason)

        train_dataset = prepare(train_dataset, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: prepare(v, f"eval '{k}'") for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, "eval")

        # Seed before the value head is initialised so runs are reproducible (GRPOTrainer seeds again later).
        from transformers import set_seed

        set_seed(args.seed)
        discriminator_tokenizer = self._discriminator_tokenizer(discriminator, discriminator_processing_class, args,
                                                                processing_class)
        discriminator = load_discriminator_model(model, discriminator, args,
                                                 discriminator_tokenizer or processing_class)
        if discriminator_tokenizer is None and discriminator is not None:
            from .discriminator.tokenization import check_vocabulary_fits

            check_vocabulary_fits(discriminator, processing_class)

        from .vllm import patched_vllm_generation

        with patched_vllm_generation(args):
            super().__init__(
                model=model,
                reward_funcs=[DiscriminatorReward(), *extra_rewards],
                reward_processing_classes=(
                    None if reward_processing_classes is None else [None, *reward_processing_classes]
                ),
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
                quantization_config=quantization_config,
                tools=tools,
                rollout_func=rollout_func,
                environment_factory=environment_factory,
            )

        from accelerate.utils import is_peft_model

        problem = peft_zero3_checkpointing_problem(
            is_peft_model(self.model), self._zero_stage(), args.gradient_checkpointing, args.sft_loss_coef
        )
        if problem:
            raise ValueError(problem)
        self._check_teacher_tools(train_dataset, "train")
        for name, split in (eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}).items():
            self._check_teacher_tools(split, f"eval '{name}'" if name else "eval")

        # One-step-off generation (gad_trl.vllm.async_generation): None = the synchronous loop, untouched.
        self._one_step_off = None
        if args.async_generation:
            from .vllm.async_generation import OneStepOffGeneration

            self._one_step_off = OneStepOffGeneration(self)

        from .cpu_distributed import register_indexed_cpu_location
        from .discriminator.adapters import is_quantized, keep_4bit_layout_for_training

        register_indexed_cpu_location()  # multi-process CPU runs resume with map_location="cpu:<rank>"
        # What the discriminator is shown (gad_trl.discriminator.inputs): the student's layout, re-encoded for a
        # discriminator with a tokenizer of its own.
        encoding = None
        if discriminator_tokenizer is not None:
            from .discriminator.tokenization import DiscriminatorEncoding

            encoding = DiscriminatorEncoding(processing_class, discriminator_tokenizer, self.eos_token_ids)
            encoding.check_prompts(train_dataset, "train")
            for name, split in (eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}).items():
                encoding.check_prompts(split, f"eval '{name}'" if name else "eval")
        encoder = InputEncoder(processing_class, self.max_completion_length, self.eos_token_ids, encoding,
                               args.teacher_response_column, self._tools_of, self.chat_template,
                               self.chat_template_kwargs)
        # The discriminator and its state (tokenizer, encoder, reward shaping, optimizer, schedule, replay buffer,
        # guard, pooling, sharding).
        self.discriminator_component = Discriminator.build(
            discriminator, args, self.accelerator, discriminator_tokenizer or processing_class, encoder,
            student=self.model,
        )
        if is_quantized(self.model):  # a QLoRA student (and shared base): trainable after evaluations on CPU too
            keep_4bit_layout_for_training(self.model)
        from .workflow.tool_calling import ToolLimits

        self._tool_limits = ToolLimits(args.tool_timeout, args.max_tool_result_chars)  # `_tool_call_loop`
        self._health = HealthMonitor(logger)
        self._student_nonfinite_guard = NonFiniteGuard(args.discriminator_max_nonfinite_updates, logger, "student")
        self._student_window_loss: torch.Tensor | None = None  # summed micro-batch losses until the optimizer step
        self._batch: _BatchInFlight | None = None  # handed between TRL's hooks (`_BatchInFlight`)
        # Fixed held-out triples: drawn at the first evaluation that needs them (`heldout_triples`); a file left in
        # output_dir is reused only by a run resumed from a checkpoint (`train(resume_from_checkpoint=...)`).
        self._heldout: list[dict] | None = None
        self._resumed_run = False
        self._run_key_cache: dict | None = None  # `_run_key`
        self._train_sampler = None  # TRL's prompt sampler, made resumable in any epoch (gad_trl.run_folder)
        # The teacher data set's name (Hub id or path), named in the model cards; `gad-trl gad` sets it,
        # `push_to_hub(dataset_name=...)` too.
        self.dataset_name: str | None = None

        from transformers.trainer_callback import ProgressCallback

        from .callbacks import default_callbacks

        progress = next((cb for cb in self.callback_handler.callbacks if isinstance(cb, ProgressCallback)), None)
        for callback in default_callbacks(progress):
            self.add_callback(callback)
        for callback in self.callback_handler.callbacks:
            self._bind_callback(callback)

    def add_callback(self, callback):
        super().add_callback(callback)
        for added in self.callback_handler.callbacks[-1:]:  # the instance Trainer built when given a class
            self._bind_callback(added)

    def _bind_callback(self, callback):
        # Callbacks that read the trainer's discriminator (JudgeEvalCallback) get it here: transformers hands
        # callbacks the model and the optimizer, not the trainer.
        bind = getattr(callback, "bind_trainer", None)
        if callable(bind) and getattr(callback, "trainer", None) is None:
            bind(self)

    def _check_teacher_tools(self, dataset, split_name: str) -> None:
        """With tools (TRL's `tools` or environments), a teacher trajectory may only call the tools its row's student
        has (`gad_trl.data.check_teacher_tools`)."""
        if dataset is None or not self.tools:
            return

        def names(tools) -> set[str]:
            return {getattr(t, "__name__", str(t)) for t in tools or []}

        if self.environment_factories is not None and self._multi_environment:
            columns = getattr(dataset, "column_names", None) or []
            environments = dataset["environment"] if "environment" in columns else None
            per_env = {name: names(tools) for name, tools in self._env_tools.items()}
            tools_of_row = (lambda i: per_env.get(environments[i])) if environments is not None else (lambda i: None)
        else:
            allowed = names(self.tools)
            tools_of_row = lambda i: allowed  # noqa: E731
        check_teacher_tools(dataset, self.args.teacher_response_column, tools_of_row, split_name)

    @staticmethod
    def _discriminator_tokenizer(discriminator, given, args, processing_class):
        """The discriminator's own tokenizer, or None when it reads the student's: `given`
        (`discriminator_processing_class`), else the one saved with `discriminator` / `discriminator_model_name_or_path`;
        one equal to the student's counts as none (the student's ids are used as they are)."""
        from .discriminator.tokenization import load_discriminator_tokenizer, same_tokenizer

        if args.discriminator_shared_base:
            if given is not None:
                raise ValueError("discriminator_shared_base shares the student's model and tokenizer; drop "
                                 "discriminator_processing_class.")
            return None
        tokenizer = given
        if tokenizer is None:
            source = discriminator if isinstance(discriminator, str) else (
                args.discriminator_model_name_or_path if discriminator is None else None)
            tokenizer = load_discriminator_tokenizer(source, args.trust_remote_code)
        if tokenizer is None or same_tokenizer(tokenizer, processing_class):
            return None
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        logger.info("The discriminator has its own tokenizer: prompts and responses are re-tokenised for it.")
        return tokenizer

    # ------------------------------------------------------------------ schedule
    def current_phase(self) -> str:
        step = self.state.global_step
        critic, sft = getattr(self.args, "critic_warmup_steps", 0), getattr(self.args, "sft_warmup_steps", 0)
        if step < critic:
            return PHASE_CRITIC_WARMUP
        if step < critic + sft:
            return PHASE_SFT_WARMUP
        return PHASE_GAD

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        frozen = self.args.critic_warmup_steps
        if self.lr_scheduler is None:
            scheduler = super().create_scheduler(max(num_training_steps - frozen, 1), optimizer)
            if frozen and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                # The student's schedule starts when it starts learning: LR 0 during the critic warm-up, then the
                # configured schedule (warm-up included) over the remaining steps.
                scheduler.lr_lambdas = [
                    (lambda step, f=f: 0.0 if step < frozen else f(step - frozen)) for f in scheduler.lr_lambdas
                ]
                for group, base_lr, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                    group["lr"] = base_lr * fn(scheduler.last_epoch)
                scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
            elif frozen:
                logger.warning(
                    f"lr_scheduler_type={self.args.lr_scheduler_type} is not a LambdaLR schedule: its steps keep "
                    "counting during the critic warm-up (the student is still frozen: it gets no gradient)."
                )
        if self.discriminator_lr_scheduler is None:
            # The discriminator steps discriminator_num_iterations times per generation batch, i.e. per
            # steps_per_generation * num_iterations micro-batches, while the student steps every
            # gradient_accumulation_steps: size its schedule in its own updates (equal to the student's steps with
            # TRL's defaults).
            micro_steps = num_training_steps * self.args.gradient_accumulation_steps
            batches = -(-micro_steps // (self.args.steps_per_generation * self.num_iterations))
            self.discriminator_component.create_scheduler(batches * self.args.discriminator_num_iterations)
        return self.lr_scheduler

    # ------------------------------------------------------------------ data plumbing
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.teacher_response_column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, self.args.teacher_response_column]

    def _get_train_sampler(self, dataset=None):
        from trl.trainer.utils import RepeatSampler

        from .run_folder import EpochReplaySampler

        sampler = super()._get_train_sampler(dataset)
        if isinstance(sampler, RepeatSampler):
            sampler = self._train_sampler = EpochReplaySampler(sampler)
        return sampler

    def _run_epoch(self, *args, **kwargs):
        # Set the sampler's epoch here: accelerate's set_epoch does not reach it through the wrappers of a run resumed
        # mid-epoch on several processes (skipped batches around the per-process shards).
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def _generate(self, prompts: list):
        from .guards import NonFiniteError, is_sampling_divergence, student_sampling_divergence

        try:
            outputs = super()._generate(prompts)
        except RuntimeError as err:
            if is_sampling_divergence(err):
                raise NonFiniteError(student_sampling_divergence(err, self.args)) from err
            raise
        self._batch = _BatchInFlight(outputs[0], outputs[2])  # the discriminator's inputs start with these prompts
        sent = getattr(getattr(self, "vllm_generation", None), "last_sync_bytes", 0)
        if sent and self.model.training:  # reload / lora sync: the size of what the server read at the last sync
            self._metrics["train"]["vllm/weight_sync_bytes"].append(float(sent))
        if self._one_step_off is not None and self.model.training:
            # Before the discriminator and policy updates on this batch: the server generates the next one meanwhile.
            self._one_step_off.after_generation(self._metrics["train"])
        return outputs

    def _tool_call_loop(self, *args, **kwargs):
        # TRL calls the tools of this batch's dicts (built per batch, environments' methods included) with neither a
        # time limit nor a size cap: bound each callable as generate-teacher does (gad_trl.workflow.tool_calling).
        limits = self._tool_limits
        wrap = limits.wrap
        self._sync_tool_dicts = [{n: wrap(f) for n, f in d.items()} for d in self._sync_tool_dicts]
        self._async_tool_dicts = [{n: wrap(f) for n, f in d.items()} for d in self._async_tool_dicts]
        timeouts, cut = limits.timeouts, limits.cut_results
        outputs = super()._tool_call_loop(*args, **kwargs)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["tools/timeouts"].append(float(limits.timeouts - timeouts))
        metrics["tools/cut_results"].append(float(limits.cut_results - cut))
        return outputs

    # ------------------------------------------------------------------ one-step-off generation (async_generation)
    @property
    def one_step_off_generation(self):
        """With `async_generation`, the one-step-off generation in use (`gad_trl.vllm.async_generation`: its
        `client.pending` is the request in flight while the discriminator and the policy train); else None."""
        return self._one_step_off

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if self._one_step_off is not None:
            epoch_iterator = self._one_step_off.wrap(epoch_iterator)  # same batches, same order; readable early
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _prepare_inputs(self, generation_batch):
        if self._one_step_off is not None and self.model.training:
            self._one_step_off.before_prepare(generation_batch)
        return super()._prepare_inputs(generation_batch)

    def _tools_of(self, environment: str | None):
        """The tools the prompts of `environment` are rendered with (None: the trainer's own), for teacher
        trajectories laid out as this environment's rollouts are."""
        env_tools = getattr(self, "_env_tools", None)
        return env_tools[environment] if env_tools and environment in env_tools else self.tools

    # ------------------------------------------------------------------ discriminator step (= reward computation)
    @profiling_decorator  # as in GRPOTrainer: the discriminator step shows up in TRL's profiling timings
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        mode = "train" if self.model.training else "eval"
        component = self.discriminator_component
        multi_environment = (getattr(self, "environment_factories", None) is not None
                             and getattr(self, "_multi_environment", False))
        # 1. What the discriminator reads: teacher answers and completions after their prompts, paired.
        batch = self._batch.discriminator = component.encode(
            inputs, self._batch.prompt_ids, completion_ids_list, self._batch.tool_mask,
            self._batch_environments if multi_environment else None)
        # 2. Its step: the scores of the completions (before the update) and the loss's metrics.
        frozen = mode == "train" and self.discriminator_frozen()
        with component.scope():  # shared base: the discriminator's adapter, forward and backward
            if mode == "train" and not frozen:
                scores, info = component.update(batch, self.state.global_step)
            else:
                # Evaluation, or a frozen discriminator: score and measure, no update, with dropout off (eval mode),
                # as the fixed held-out evaluation does.
                scores, info = component.measure(batch)
        if mode == "train":
            info["frozen"] = float(frozen)
        # 3. The rewards: finite, shaped.
        rewards, reward_info = component.rewards(scores, batch)
        info.update(reward_info)
        info.update(batch.metrics())
        info["phase"] = float(_PHASE_IDS[self.current_phase()])
        info = self._average_over_processes(info)
        for name, value in info.items():
            self._metrics[mode][f"discriminator/{name}"].append(value)
        if mode == "train" and self.args.warn_on_unhealthy_metrics and self.accelerator.is_main_process:
            self._health.check(info, self.args.discriminator_loss_type, self.state.global_step)
        # 4. The discriminator is the first reward column; TRL computes the other columns (reward_funcs), gathers them
        # across processes (rewards are normalised per group) and combines them with reward_weights.
        self.reward_funcs[0].scores = rewards.detach().float().cpu().tolist()
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def discriminator_frozen(self) -> bool:
        """True once `global_step` reaches `discriminator_freeze_after_step`: the discriminator then only scores."""
        freeze_at = self.args.discriminator_freeze_after_step
        return freeze_at is not None and self.state.global_step >= freeze_at

    def _average_over_processes(self, info: dict) -> dict:
        """Each process measured its own pairs; log the mean over processes (equal batches per process), so every
        rank logs the same numbers (num_teacher_sequences: the total)."""
        if self.accelerator.num_processes <= 1:
            return info
        names = sorted(info)
        values = torch.tensor([float(info[n]) for n in names], device=self.accelerator.device, dtype=torch.float64)
        mean = self.accelerator.gather(values.unsqueeze(0)).mean(dim=0)
        out = dict(zip(names, mean.tolist()))
        out["num_teacher_sequences"] *= self.accelerator.num_processes
        return out

    # ------------------------------------------------------------------ the discriminator (gad_trl.discriminator)
    @property
    def discriminator(self) -> torch.nn.Module:
        """The discriminator's model (a sequence-classification model with one label, or its LoRA / shared form)."""
        return self.discriminator_component.model

    @property
    def discriminator_processing_class(self):
        """The discriminator's tokenizer (saved with it): the student's unless it has its own."""
        return self.discriminator_component.tokenizer

    @property
    def discriminator_optimizer(self) -> torch.optim.Optimizer:
        return self.discriminator_component.optimizer

    @property
    def discriminator_lr_scheduler(self):
        return self.discriminator_component.lr_scheduler

    def _finite_on_every_process(self, finite: bool) -> bool:
        return finite_on_every_process(self.accelerator, finite)

    # ------------------------------------------------------------------ student loss by phase
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training and (getattr(self.args, "sft_warmup_steps", 0) > 0
                                    or getattr(self.args, "sft_loss_coef", 0) > 0):
            # Teacher tokens ride along with each completion row so they are shuffled/split with it; read by the
            # SFT warm-up and by the sft_loss_coef term.
            targets = self._batch.discriminator.sft
            ids, mask = pad_right(targets.completions, self._tokenizer.pad_token_id, self.accelerator.device)
            output["teacher_completion_ids"] = ids
            output["teacher_completion_mask"] = mask
            output["teacher_label_mask"], _ = pad_right(targets.label_masks, 0, self.accelerator.device)
            output["teacher_index"] = torch.tensor(targets.index, device=self.accelerator.device)
        return output

    def _zero_stage(self) -> int | None:
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        return None if plugin is None else plugin.zero_stage

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            phase = self.current_phase()
            if phase == PHASE_CRITIC_WARMUP:
                # Student frozen: no forward, no gradient (the optimizer skips parameters whose grad is None).
                # A graph node (not a leaf): DeepSpeed's backward only accepts a loss with a grad_fn.
                if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage < 3:
                    # ZeRO-1/2 reduce gradients in buckets that must not be empty: zero gradients for every
                    # parameter (its optimizer then counts these steps, at learning rate 0).
                    return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
                return torch.zeros((), device=self.accelerator.device, requires_grad=True) * 1.0
            if phase == PHASE_SFT_WARMUP:
                return self.compute_sft_loss(model, inputs)
            if getattr(self.args, "sft_loss_coef", 0) > 0:
                grpo_loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                return grpo_loss + self.args.sft_loss_coef * self.compute_sft_loss(model, inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # ------------------------------------------------------------------ student non-finite guard (gad_trl.guards)
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Summed over the accumulation window (finite iff every micro-batch loss is); read at its optimizer step.
        self._student_window_loss = loss if self._student_window_loss is None else self._student_window_loss + loss
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # transformers computes the student's gradient norm here, on every backend, right before `optimizer.step()`
        # (no public hook sees it): the place to veto a non-finite update, whose NaN norm it would clip with and apply.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        window_loss, self._student_window_loss = self._student_window_loss, None
        if self.is_deepspeed_enabled:
            return grad_norm  # DeepSpeed has already stepped inside backward (with its own fp16 overflow skip)
        # Under fp16 loss scaling, inf gradients are routine: the GradScaler skips those steps and lowers its scale.
        checked_norm = grad_norm if self.accelerator.scaler is None else None
        applied = self._student_nonfinite_guard.check(
            self._finite_on_every_process(all_finite(window_loss, checked_norm)), self.state.global_step,
            nonfinite_details(window_loss, None, checked_norm), student_divergence_hint(self.args),
        )
        self._metrics["train"]["student/nonfinite_skipped"].append(float(not applied))
        if not applied:
            # The optimizer skips parameters without a gradient; the LR schedule still advances with global_step,
            # so the phases keep their boundaries.
            model.zero_grad(set_to_none=True)
        return grad_norm

    def compute_sft_loss(self, model, inputs):
        """Cross-entropy of the student on the teacher responses of this micro-batch, one row per prompt."""
        keep, seen = [], set()
        for i, t in enumerate(inputs["teacher_index"].tolist()):
            if t not in seen:
                seen.add(t)
                keep.append(i)
        keep = torch.tensor(keep, device=inputs["prompt_ids"].device)
        prompt_ids, prompt_mask = inputs["prompt_ids"][keep], inputs["prompt_mask"][keep]
        completion_ids, completion_mask = inputs["teacher_completion_ids"][keep], inputs["teacher_completion_mask"][keep]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        label_mask = torch.cat([prompt_mask, inputs["teacher_label_mask"][keep]], dim=1)  # 0: a trajectory's tool results
        labels = input_ids.masked_fill((attention_mask == 0) | (label_mask == 0), -100)
        labels[:, : prompt_ids.size(1)] = -100
        with self.accelerator.autocast():
            # Plain forward (no fused head): the fused head divides logits by the sampling temperature.
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        self._metrics["train"]["sft/loss"].append(loss.item())
        return loss / self.current_gradient_accumulation_steps

    # ------------------------------------------------------------------ fixed held-out evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.args.discriminator_heldout_size > 0:
            heldout = {
                f"{metric_key_prefix}_discriminator_heldout/{k}": v
                for k, v in self.evaluate_discriminator_heldout().items()
                if isinstance(v, (int, float))
            }
            self.log(heldout)
            metrics.update(heldout)
        return metrics

    def evaluate_discriminator_heldout(self) -> dict:
        """The discriminator's accuracy and score gap on the fixed held-out triples (sampled on first use)."""
        return self.discriminator_component.evaluate_triples(self.heldout_triples(),
                                                             self.args.per_device_eval_batch_size)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`, with `resume_from_checkpoint=True` (or "true") resuming from the latest *complete*
        checkpoint: a folder left half-written by a kill during a save is named and skipped (gad_trl.run_folder)."""
        from transformers.trainer_utils import TrainOutput, get_last_checkpoint

        from .run_folder import check_run_key, checkpoint_step, hold_output_dir, resolve_resume_checkpoint

        output_dir = self.args.output_dir
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, output_dir)
        if checkpoint is not None:
            check_run_key(checkpoint, self._run_key())
            step = checkpoint_step(checkpoint)
            if self.args.max_steps > 0 and step is not None and step >= self.args.max_steps:
                # transformers would train one more step and overwrite the saved discriminator: nothing to do.
                logger.warning(f"{checkpoint} is already at step {step} of max_steps={self.args.max_steps}: the run is "
                               "complete, nothing is trained. Raise max_steps in a new run to train further.")
                return TrainOutput(step, 0.0, {})
        elif os.path.isdir(output_dir) and get_last_checkpoint(output_dir) is not None:
            logger.warning(
                f"{output_dir} already holds checkpoints of another run ({os.path.basename(get_last_checkpoint(output_dir))}"
                "): this new run writes next to them, and a later resume_from_checkpoint=True would pick the newest of "
                "either run. Use an empty output_dir, or resume that run instead."
            )
        # Only a resumed run may reuse the held-out triples found in output_dir (a new run draws its own).
        self._resumed_run = checkpoint is not None
        self._student_window_loss = None  # a window left open by an interrupted train() does not carry over
        # The output_dir lock: taken here when the caller (a `gad-trl` command) does not hold it already.
        with hold_output_dir(output_dir, enabled=self.args.should_save):
            generation = self._claim_vllm_server()
            try:
                return super().train(checkpoint, *args, **kwargs)
            finally:
                if self._one_step_off is not None:
                    self._one_step_off.close()  # a request in flight is dropped: nothing trains on it or saves it
                if generation is not None:
                    generation.release_server()
                    if callable(getattr(generation, "remove_synced_weights", None)):
                        generation.remove_synced_weights()

    def _claim_vllm_server(self):
        """One run per vLLM server (gad_trl.vllm.server_claim): the main process claims it for this train() call;
        refused on every process when another run holds it. Returns the generation backend holding the claim."""
        generation = getattr(self, "vllm_generation", None) if getattr(self, "use_vllm", False) else None
        if not callable(getattr(generation, "claim_server", None)):
            return None
        from .vllm.server_claim import run_holder

        problem = generation.claim_server(run_holder(self.args.output_dir)) if self.accelerator.is_main_process else None
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            box = [problem]
            broadcast_object_list(box, from_process=0)
            problem = box[0]
        if problem is not None:
            from .vllm.generation import ServerInUseError

            raise ServerInUseError(problem)
        return generation

    def _run_key(self) -> dict:
        # Computed once: the student's name and the training data do not change during a run, and every save writes it.
        if self._run_key_cache is None:
            from .run_folder import run_key

            student = self.accelerator.unwrap_model(self.model)
            self._run_key_cache = run_key(str(getattr(student.config, "_name_or_path", "")), self.train_dataset,
                                          self.args.max_steps)
        return self._run_key_cache

    def heldout_triples(self) -> list[dict]:
        from .discriminator.heldout import draw_rows, load_or_sample, rows_digest, sample_triples

        if self._heldout is not None:
            return self._heldout
        dataset = self.eval_dataset
        if dataset is None or isinstance(dataset, dict):
            raise ValueError(
                "discriminator_heldout_size > 0 needs a single eval_dataset (the held-out prompts are drawn from it)."
            )
        if not isinstance(dataset[0]["prompt"], list):
            raise ValueError("The fixed held-out evaluation needs conversational prompts (lists of messages).")
        column = self.args.teacher_response_column
        rows = draw_rows(dataset, self.args.discriminator_heldout_size, self.args.seed, column)
        student = self.accelerator.unwrap_model(self.model)
        key = {
            "eval_rows": len(dataset),
            "drawn_rows_digest": rows_digest(rows),  # which prompts and teacher responses: the data and the draw
            "num_samples": len(rows),
            "seed": self.args.seed,
            "teacher_response_column": column,
            "student": str(getattr(student.config, "_name_or_path", "")),
            "max_completion_length": self.max_completion_length,
            "temperature": self.temperature,
        }

        def sample() -> list[dict]:
            devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
            # Own seed, without moving the training RNG (resumed runs must see the same random stream).
            with torch.random.fork_rng(devices=devices):  # (the student's train/eval mode is restored too)
                return sample_triples(student, self.processing_class, rows, self.args.seed, self.max_completion_length,
                                      self.temperature, self.args.per_device_eval_batch_size)

        path = os.path.join(self.args.output_dir, "heldout_triples.jsonl")
        self._heldout, _, _ = load_or_sample(path, key, sample, reuse=self._resumed_run, save=self.args.should_save)
        return self._heldout

    # ------------------------------------------------------------------ saving / resuming
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        from .run_folder import explain_disk_full

        output_dir = output_dir or self.args.output_dir
        # A disk that fills up: a DiskFullError naming the file being written and the fix (gad_trl.run_folder).
        with explain_disk_full(output_dir):
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:  # which run wrote this folder: a resume checks it (run_folder.check_run_key)
                import json

                from .run_folder import RUN_KEY_NAME

                with open(os.path.join(output_dir, RUN_KEY_NAME), "w") as f:
                    json.dump(self._run_key(), f, indent=2)
            self.discriminator_component.save_model(output_dir, final=not _internal_call,
                                                    write_card=self._write_discriminator_card)

    def _save_checkpoint(self, model, trial):
        from .run_folder import explain_disk_full

        # The whole checkpoint (model card, weights, optimizer, RNG and trainer states) under one explanation.
        with explain_disk_full(self._get_output_dir(trial=trial)):
            return super()._save_checkpoint(model, trial)

    def _write_discriminator_card(self, disc_dir: str) -> None:
        from .hub import write_discriminator_card

        write_discriminator_card(self, disc_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's student card (its template, GAD's name and paper) plus the GAD section (`gad_trl.hub`)."""
        from .hub import append_student_card_section, discriminator_locations, hub_id, student_card_section

        self.dataset_name = dataset_name or self.dataset_name
        # TRL links `dataset_name` as a Hub data set: local paths are named in the GAD section only.
        super().create_model_card(model_name=model_name, dataset_name=hub_id(self.dataset_name), tags=tags)
        if self.is_world_process_zero():
            locations = discriminator_locations(self.args, self.hub_model_id or self.args.hub_model_id)
            append_student_card_section(os.path.join(self.args.output_dir, "README.md"),
                                        student_card_section(self, **locations))

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None, **kwargs):
        """TRL's `push_to_hub`: the student with its card, and the discriminator in the same commit (`discriminator/`
        sub-folder) or, with `discriminator_hub_model_id`, in its own repo."""
        from .hub import DISCRIMINATOR_SUBFOLDER, push_discriminator

        self.dataset_name = kwargs.pop("dataset_name", None) or self.dataset_name
        own_repo = self.args.discriminator_hub_model_id
        # `discriminator*`: discriminator/ and, for a PEFT discriminator, discriminator_merged/
        with _upload_ignoring(f"{DISCRIMINATOR_SUBFOLDER}*" if own_repo else None):
            result = super().push_to_hub(commit_message, blocking, token, revision,
                                         dataset_name=self.dataset_name, **kwargs)
        disc_dir = os.path.join(self.args.output_dir, DISCRIMINATOR_SUBFOLDER)
        from .discriminator.adapters import MERGED_DIR

        if os.path.isdir(os.path.join(self.args.output_dir, MERGED_DIR)):  # a PEFT discriminator's own repo: the merged
            disc_dir = os.path.join(self.args.output_dir, MERGED_DIR)  # export (a plain model), not the adapter
        if own_repo and self.is_world_process_zero():
            push_discriminator(disc_dir, own_repo, commit_message or "GAD discriminator",
                               token if token is not None else self.args.hub_token, self.args.hub_private_repo,
                               revision if revision is not None else self.args.hub_revision, blocking)
        return result

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # Next to the student's states, inside Trainer._save_checkpoint: written before a checkpoint is pushed
        # (hub_strategy="checkpoint") and skipped with save_only_model, like the student's.
        super()._save_optimizer_and_scheduler(output_dir)
        self.discriminator_component.save_state(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from accelerate.utils import is_peft_model

        from .discriminator.adapters import is_adapter_folder

        model = model if model is not None else self.model
        if is_peft_model(model) and is_adapter_folder(os.path.join(resume_from_checkpoint, DISCRIMINATOR_DIR)):
            # transformers would take `discriminator/` (an adapter folder) for one of the student's adapters and then
            # skip the student's own adapter at the root: load the root adapter alone, as it does without sub-folders.
            # The discriminator is restored in _load_optimizer_and_scheduler.
            model.load_adapter(resume_from_checkpoint, model.active_adapters[0], is_trainable=True)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.discriminator_component.load(checkpoint)
