"""`Discriminator`: the one object that owns GAD's discriminator and everything that trains it.

It holds the model (full, LoRA / QLoRA, or sharing the student's base), its tokenizer, its input encoder
(`inputs.InputEncoder`: what it is shown), its reward shaping, its AdamW and learning-rate schedule, the replay
buffer, the non-finite guard, the pooling and the FSDP2 sharding, and offers what `GADTrainer` and the evaluations
need of it: `build`, `encode` (rows and completions -> a `DiscriminatorBatch`), `update` (the documented loss, k
optimizer steps), `measure` (score without training), `rewards` (shaped scores), `evaluate_triples` / `score_triples`
(the held-out set, judge agreement), `save_model` / `save_state` and `load`. The trainer keeps the TRL glue (hooks,
metrics, phases, the student's SFT term) and hands it rows and completions.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch import nn
from transformers import get_scheduler
from transformers.utils import logging

from ..guards import NonFiniteGuard, all_finite, discriminator_divergence_hint, finite_on_every_process, nonfinite_details
from ..run_folder import load_checkpoint_file
from .adapters import discriminator_scope, is_peft_discriminator, is_quantized
from .inputs import DiscriminatorBatch, InputEncoder, Pairs
from .losses import discriminator_loss
from .model import eval_mode, load_discriminator, replicated_loading, score_sequences
from .pooling import discriminator_pooling, set_discriminator_pooling
from .replay import ReplayBuffer, ReplayPair
from .value_head import load_value_model

logger = logging.get_logger(__name__)

DISCRIMINATOR_DIR = "discriminator"
DISCRIMINATOR_OPTIMIZER_NAME = "discriminator_optimizer.pt"
DISCRIMINATOR_SCHEDULER_NAME = "discriminator_scheduler.pt"
DISCRIMINATOR_REPLAY_NAME = "discriminator_replay-rank{rank}.pt"  # one buffer per process: its own completions


def load_discriminator_model(student, discriminator, args, processing_class) -> nn.Module | None:
    """The discriminator's model before the student is wrapped (call it before `GRPOTrainer.__init__`, after seeding:
    the value head is initialised here). `discriminator`: None, a path / Hub id, or a model instance. Returns None for
    a shared base, which is attached to the student later (`Discriminator.build`)."""
    if args.discriminator_shared_base:
        if discriminator is not None:
            raise ValueError(
                "discriminator_shared_base builds the discriminator on the student's base; do not pass a "
                "`discriminator` as well (drop one of the two)."
            )
        if args.world_size > 1:
            raise ValueError(
                "discriminator_shared_base runs in one training process (the student's adapters are wrapped for "
                "data parallelism, the discriminator's must not be). Launch one process, or use "
                "discriminator_use_peft (a LoRA discriminator on its own base) for multi-GPU runs."
            )
        return None
    if discriminator is None or isinstance(discriminator, str):
        init_kwargs = args.discriminator_init_kwargs
        init_kwargs = dict(args.model_init_kwargs or {}) if init_kwargs is None else dict(init_kwargs)
        # As GRPOTrainer does for the student and the reference model.
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        return load_discriminator(
            student,
            discriminator if isinstance(discriminator, str) else args.discriminator_model_name_or_path,
            init_kwargs,
            processing_class.pad_token_id,
            deepspeed_plugin=getattr(args, "deepspeed_plugin", None),
            args=args,
        )
    if getattr(discriminator.config, "num_labels", None) != 1:
        raise ValueError(
            f"The discriminator must output one score (num_labels=1), got num_labels={discriminator.config.num_labels}. "
            "Load it with AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)."
        )
    return discriminator


def _warn_if_half_precision(model: nn.Module, learning_rate: float) -> None:
    # The discriminator has a plain AdamW (no fp32 master weights, unlike DeepSpeed/FSDP mixed precision for the
    # student): in bf16, a weight moves only if its update exceeds ~0.4% of its size, so most updates at lr 1e-6 vanish.
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    half = sorted(str(d).removeprefix("torch.") for d in dtypes & {torch.bfloat16, torch.float16})
    if half:
        logger.warning(
            f"The discriminator's trainable weights are {'/'.join(half)} and its AdamW keeps no float32 copy: updates "
            f"at discriminator_learning_rate={learning_rate:g} smaller than {half[0]}'s resolution are lost. Load it in "
            "float32 (discriminator_init_kwargs: {dtype: float32}) where memory allows, or raise its learning rate."
        )


class Discriminator:
    """GAD's discriminator and its training state. Build it with `Discriminator.build`."""

    def __init__(self, model: nn.Module, args, accelerator, tokenizer, encoder: InputEncoder, sharded: bool,
                 shaping=None):
        from .shaping import RewardShaping

        self.model = model
        self.args = args
        self.accelerator = accelerator
        self.tokenizer = tokenizer  # the ids it reads (saved with it); the student's unless it has its own
        self.encoder = encoder
        self.pad_token_id = tokenizer.pad_token_id
        self.shaping = shaping if shaping is not None else RewardShaping.from_args(args)  # the reward's, not the loss's
        self.sharded = sharded
        # Plain optimizer on purpose: one passed through accelerator.prepare only steps when accelerate's
        # sync_gradients is set, i.e. silently never inside a gradient-accumulation window, which is exactly where
        # the discriminator update runs (once per generation batch).
        with discriminator_scope(model):  # a shared-base adapter is trainable while active
            self.optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad],
                lr=args.discriminator_learning_rate,
                weight_decay=args.discriminator_weight_decay,
                betas=(args.discriminator_adam_beta1, args.discriminator_adam_beta2),
            )
        self.lr_scheduler = None  # `create_scheduler`, once the run's length is known
        self.guard = NonFiniteGuard(args.discriminator_max_nonfinite_updates, logger)
        self.replay = (
            ReplayBuffer(args.discriminator_replay_buffer_size, args.seed + accelerator.process_index)
            if args.discriminator_replay_buffer_size > 0 else None
        )

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, model: nn.Module | None, args, accelerator, tokenizer, encoder: InputEncoder,
              student=None) -> Discriminator:
        """Finish the model from `load_discriminator_model` once the student is wrapped: attach a shared base to
        `student`, record the pooling and the reward shaping, shard (FSDP2) or place it, set dropout / gradient
        checkpointing, and make the optimizer, guard and replay buffer. `tokenizer`: the discriminator's (the
        student's unless it has its own); `encoder`: what it is shown (`inputs.InputEncoder`)."""
        from .sharding import resolve_discriminator_sharding, shard_discriminator

        if args.discriminator_shared_base:
            from .adapters import attach_shared_discriminator

            model = attach_shared_discriminator(student, args, tokenizer.pad_token_id)
        # Written into the discriminator's config (saved with it), so a reloaded discriminator scores the same way.
        set_discriminator_pooling(model, args.discriminator_pooling or discriminator_pooling(model))
        from .shaping import RewardShaping

        shaping = RewardShaping.from_args(args)
        shaping.record(model)  # this run's reward shaping, saved with the weights
        if is_peft_discriminator(model):
            if args.discriminator_sharding == "fsdp2":
                raise ValueError(
                    "discriminator_sharding='fsdp2' shards a full discriminator; a LoRA / QLoRA / shared-base one "
                    "(discriminator_use_peft, discriminator_shared_base) trains only its adapter and head and stays "
                    "replicated. Set discriminator_sharding to 'auto' or 'none'."
                )
            sharded = False  # `auto`: its trainable part is small; the frozen base is replicated
        else:
            sharded = resolve_discriminator_sharding(args.discriminator_sharding, accelerator)
        if sharded:  # before `.to(device)`: only this process's shards reach the device
            compute_dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
            model = shard_discriminator(model, accelerator.device, compute_dtype)
        # A 4-bit base is already where bitsandbytes quantized it (device_map at load time).
        model = model if is_quantized(model) else model.to(accelerator.device)
        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(model)
        checkpointing = args.discriminator_gradient_checkpointing
        if checkpointing is None:
            checkpointing = args.gradient_checkpointing
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        model.train()
        _warn_if_half_precision(model, args.discriminator_learning_rate)
        if hasattr(model, "add_model_tags"):
            model.add_model_tags(["gad", "discriminator"])
        return cls(model, args, accelerator, tokenizer, encoder, sharded, shaping)

    def create_scheduler(self, num_updates: int):
        """The discriminator's learning-rate schedule over `num_updates` optimizer steps (built once)."""
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.discriminator_lr_scheduler_type,
                optimizer=self.optimizer,
                num_warmup_steps=self.args.discriminator_warmup_steps,
                num_training_steps=max(num_updates, 1),
            )
        return self.lr_scheduler

    @property
    def is_peft(self) -> bool:
        return is_peft_discriminator(self.model)

    def scope(self):
        """Inside: the discriminator's adapter is the active one (a shared base); a no-op otherwise."""
        return discriminator_scope(self.model)

    # ------------------------------------------------------------------ scoring
    def loss_kwargs(self) -> dict:
        return {"loss_type": self.args.discriminator_loss_type, **self.args.discriminator_loss_constants()}

    def score(self, sequences: list[list[int]], batch_size: int | None = None, response_starts=None) -> torch.Tensor:
        """Scores of token sequences, in chunks of `batch_size` (default: discriminator_mini_batch_size);
        `response_starts` (prompt lengths) are needed by mean pooling. Keeps autograd if enabled."""
        context = self.accelerator.autocast() if self.args.bf16 or self.args.fp16 else nullcontext()
        with context:
            return score_sequences(
                self.model, sequences, self.pad_token_id, self.accelerator.device,
                batch_size or self.args.discriminator_mini_batch_size, response_starts,
            )

    def pair_loss(self, scores: torch.Tensor, num_teacher: int, pairs: Pairs):
        """`discriminator_loss` of `pairs` on the scores of `teacher_seqs + student_seqs`."""
        return discriminator_loss(*pairs.scores(scores, num_teacher), weights=pairs.weight, **self.loss_kwargs())

    def encode(self, rows, prompt_ids, completion_ids, tool_masks=None, environments=None) -> DiscriminatorBatch:
        """This generation batch as the discriminator reads it (`InputEncoder.encode`)."""
        return self.encoder.encode(rows, prompt_ids, completion_ids, tool_masks, environments, self.accelerator.device)

    def measure(self, batch: DiscriminatorBatch) -> tuple[torch.Tensor, dict]:
        """Score and measure without training (evaluation, a frozen discriminator): dropout off (eval mode), no
        graph. Returns the student scores and the loss's metrics."""
        with eval_mode(self.model), torch.no_grad():
            scores = self.score(batch.sequences, response_starts=batch.response_starts)
        _, info = self.pair_loss(scores, batch.num_teacher, batch.pairs)
        return scores[batch.num_teacher :], info

    def rewards(self, scores: torch.Tensor, batch: DiscriminatorBatch) -> tuple[torch.Tensor, dict]:
        """The student's rewards from its completions' scores: non-finite scores give no signal (zeros: NaN
        advantages would reach the student's weights), then the reward shaping (on the reward only: the loss read
        the raw scores). Returns (rewards, metrics)."""
        info = {}
        if not all_finite(scores):
            scores = torch.zeros_like(scores)
        if self.shaping.active:
            scores = self.shaping(scores, batch.student_lengths)
            info["shaped_reward_mean"] = scores.mean().item()
        return scores, info

    # ------------------------------------------------------------------ held-out and judge triples
    def evaluate_triples(self, triples: list[dict], batch_size: int = 8) -> dict:
        """Accuracy and score statistics on held-out triples (`heldout.evaluate_triples`), laid out by this
        discriminator's encoder, in eval mode and its adapter scope."""
        from .heldout import evaluate_triples

        with eval_mode(self.model), self.scope():
            return evaluate_triples(self.model, self.encoder, triples, batch_size)

    def score_triples(self, triples: list[dict], batch_size: int = 8) -> list[float]:
        """Raw scores of triples' student responses (sampled completions), encoded as the training rewards' inputs,
        dropout off, in its adapter scope: what judge agreement compares with the judge."""
        if not triples:
            return []
        sequences, starts = self.encoder.student_sequences(triples)
        with eval_mode(self.model), self.scope(), torch.no_grad():
            return score_sequences(self.model, sequences, self.pad_token_id, self.accelerator.device, batch_size,
                                   starts).float().cpu().tolist()

    # ------------------------------------------------------------------ training
    def update(self, batch: DiscriminatorBatch, global_step: int) -> tuple[torch.Tensor, dict]:
        """`discriminator_num_iterations` optimizer steps on this batch's pairs (plus replayed ones); returns the
        student scores from before the first step (the raw scores, one per current completion, in order) and that
        step's metrics.

        Replace mode (`discriminator_replay_mode`): as many current completions as pairs replayed are left out of the
        loss and the backward; they are scored first, without a graph and in the same train/eval mode as the others,
        so that every current completion still gets its pre-step score as reward."""
        teacher_seqs, student_seqs, response_starts = batch.teacher_seqs, batch.student_seqs, batch.response_starts
        num_current, num_current_teacher = len(student_seqs), len(teacher_seqs)
        current = (teacher_seqs, student_seqs, batch.pairs, response_starts)
        teacher_seqs, student_seqs, pairs, response_starts, num_replayed, left_out = self._add_replayed_pairs(*current)
        left_out_scores = self._score_left_out(*current, left_out)  # before the first step: pre-step scores
        num_kept = num_current - len(left_out)
        num_teacher = len(teacher_seqs)
        sequences = teacher_seqs + student_seqs
        rewards, info = None, None
        for iteration in range(self.args.discriminator_num_iterations):
            scores, loss, step_info = self.step(sequences, num_teacher, pairs, response_starts, global_step)
            if iteration == 0:
                rewards, info = scores[num_teacher : num_teacher + num_kept].detach(), step_info
                if left_out:
                    rewards = _with_left_out(rewards, left_out_scores, left_out)
                if num_replayed:
                    # Logged metrics describe the current pairs, all of them (what the health checks and the rewards
                    # are about); the replayed pairs get their own accuracy.
                    current_scores = torch.cat([scores[:num_current_teacher], rewards])
                    _, current_info = self.pair_loss(current_scores, num_current_teacher, current[2])
                    replayed = Pairs(pairs.teacher[-num_replayed:], pairs.student[-num_replayed:])
                    _, replay_info = self.pair_loss(scores, num_teacher, replayed)
                    info.update(current_info, replay_accuracy=replay_info["accuracy"], trained_loss=loss.item())
            else:
                info["last_iteration_loss"] = loss.item()
            info["nonfinite_skipped"] = max(info["nonfinite_skipped"], step_info["nonfinite_skipped"])
        if self.replay is not None:
            info["replay_pairs"] = float(num_replayed)
            if self.args.discriminator_replay_mode == "replace":
                info["replay_replaced"] = float(len(left_out))
            self.replay.add(_replay_pairs(*current))  # every current completion, the left-out ones too
        return rewards, info

    def step(self, sequences, num_teacher, pairs: Pairs, response_starts, global_step: int):
        """One optimizer step on `pairs` (indices into `sequences[:num_teacher]` and `sequences[num_teacher:]`);
        returns the detached pre-step scores, the loss and the metrics."""
        pairs = Pairs.of(pairs)
        if self.args.discriminator_mini_batch_size is None:
            # One forward with gradients: its detached scores are the rewards, its loss trains D.
            scores = self.score(sequences, response_starts=response_starts)
            loss, info = self.pair_loss(scores, num_teacher, pairs)
            loss.backward()
        else:
            # Bounded memory: score everything without a graph, take dLoss/dscore, then re-run each chunk with a
            # graph and back-propagate score * dLoss/dscore (same gradient as the one-pass loss).
            with torch.no_grad():
                scores = self.score(sequences, response_starts=response_starts)
            leaf = scores.detach().requires_grad_(True)
            loss, info = self.pair_loss(leaf, num_teacher, pairs)
            (grad_scores,) = torch.autograd.grad(loss, leaf)
            chunk = self.args.discriminator_mini_batch_size
            for start in range(0, len(sequences), chunk):
                part_starts = None if response_starts is None else response_starts[start : start + chunk]
                part = self.score(sequences[start : start + chunk], batch_size=chunk, response_starts=part_starts)
                (part * grad_scores[start : start + chunk]).sum().backward()
        self.all_reduce_grads()
        max_norm = self.args.discriminator_max_grad_norm
        if max_norm is None:
            max_norm = self.args.max_grad_norm
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = max_norm if max_norm and max_norm > 0 else float("inf")
        if self.sharded:
            from .sharding import clip_grad_norm

            grad_norm = clip_grad_norm(params, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        info["grad_norm"] = grad_norm.item()
        info["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        # Skip (no optimizer or scheduler step) when the loss, scores or gradient norm is non-finite on any process;
        # raises after discriminator_max_nonfinite_updates skips in a row (gad_trl.guards).
        applied = self.guard.check(
            finite_on_every_process(self.accelerator, all_finite(loss, scores, grad_norm)), global_step,
            nonfinite_details(loss, scores, grad_norm), discriminator_divergence_hint(self.args),
        )
        info["nonfinite_skipped"] = float(not applied)
        if applied:
            self.optimizer.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return scores.detach(), loss.detach(), info

    def _add_replayed_pairs(self, teacher_seqs, student_seqs, pairs: Pairs, response_starts):
        """The update's pairs plus `discriminator_replay_ratio` x as many past ones (one per completion) drawn from
        the replay buffer (drawn before this batch joins it, so they are strictly earlier completions); returns the
        extended (teacher_seqs, student_seqs, pairs, response_starts), the number replayed and the current
        completions left out (replace mode: as many as replayed, drawn at random, all their pairs; add mode: none).
        Replace mode keeps at least one current completion (rounding ratio x n can reach n)."""
        if self.replay is None:
            return teacher_seqs, student_seqs, pairs, response_starts, 0, []
        replace = self.args.discriminator_replay_mode == "replace"
        wanted = round(self.args.discriminator_replay_ratio * len(student_seqs))
        if replace:
            wanted = min(wanted, len(student_seqs) - 1)
        # Every process has the same batch size and buffer fill, so every process replays (and leaves out) the same
        # number of pairs (a sharded discriminator needs the same number of forwards on each rank).
        drawn = self.replay.sample(wanted)
        if not drawn:
            return teacher_seqs, student_seqs, pairs, response_starts, 0, []
        num_teacher = len(teacher_seqs)
        teacher_starts, student_starts = response_starts[:num_teacher], response_starts[num_teacher:]
        left_out = self.replay.leave_out(len(student_seqs), len(drawn)) if replace else []
        if left_out:
            dropped = set(left_out)
            kept = [i for i in range(len(student_seqs)) if i not in dropped]
            pairs = pairs.for_students(kept, len(student_seqs))
            student_seqs = [student_seqs[i] for i in kept]
            student_starts = [student_starts[i] for i in kept]
        num_student = len(student_seqs)
        device, dtype = pairs.teacher.device, pairs.teacher.dtype
        return (
            teacher_seqs + [p.teacher for p in drawn],
            student_seqs + [p.student for p in drawn],
            pairs.extended(torch.arange(num_teacher, num_teacher + len(drawn), device=device, dtype=dtype),
                           torch.arange(num_student, num_student + len(drawn), device=device, dtype=dtype)),
            teacher_starts + [p.teacher_start for p in drawn] + student_starts + [p.student_start for p in drawn],
            len(drawn),
            left_out,
        )

    def _score_left_out(self, teacher_seqs, student_seqs, pairs, response_starts, left_out: list[int]):
        """Scores of the left-out current completions (replace mode), without a graph: their rewards. None if none."""
        if not left_out:
            return None
        starts = None if response_starts is None else response_starts[len(teacher_seqs) :]
        with torch.no_grad():
            return self.score([student_seqs[i] for i in left_out],
                              response_starts=None if starts is None else [starts[i] for i in left_out])

    def all_reduce_grads(self):
        # Replicated on every process (not wrapped in DDP): average the gradients by hand. (Sharded, FSDP2 has
        # already reduce-scattered them.)
        if self.accelerator.num_processes <= 1 or self.sharded:
            return
        for p in self.model.parameters():
            if p.grad is not None:
                # SUM then divide: ReduceOp.AVG exists only on NCCL, not on gloo (multi-process CPU runs).
                torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
                p.grad.div_(self.accelerator.num_processes)

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str, final: bool, write_card) -> None:
        """The discriminator's weights into `output_dir/discriminator/` (an adapter folder for a PEFT one, plus a
        merged plain model at the final save), with its tokenizer and a card (`write_card(folder)`). Collective when
        sharded: every process must call it."""
        tokenizer = self.tokenizer
        state_dict = None
        if self.sharded:  # gathered by every process, kept on the main one
            from .sharding import full_model_state_dict

            state_dict = full_model_state_dict(self.model)
        if not self.args.should_save:
            return
        disc_dir = os.path.join(output_dir, DISCRIMINATOR_DIR)
        if self.is_peft:
            from .adapters import MERGED_DIR, export_merged_discriminator, save_discriminator_adapter

            # Adapter + head (small; what checkpoints resume from). A shared-base adapter is also written here by
            # the student's PEFT save_pretrained (adapter "discriminator"), without the head: replaced now.
            save_discriminator_adapter(self.model, disc_dir)
            if final:  # a plain model folder too, for the Hub and reward-model use
                merged_dir = os.path.join(output_dir, MERGED_DIR)
                export_merged_discriminator(self.model, disc_dir, merged_dir, tokenizer)
                write_card(merged_dir)
        else:
            self.accelerator.unwrap_model(self.model).save_pretrained(disc_dir, state_dict=state_dict)
        tokenizer.save_pretrained(disc_dir)
        write_card(disc_dir)

    def replay_path(self, directory: str) -> str:
        return os.path.join(directory, DISCRIMINATOR_REPLAY_NAME.format(rank=self.accelerator.process_index))

    def save_state(self, output_dir: str) -> None:
        """Optimizer, schedule and replay buffer into a checkpoint folder. Collective when sharded."""
        if self.sharded:
            from .sharding import save_optimizer

            save_optimizer(self.model, self.optimizer, os.path.join(output_dir, DISCRIMINATOR_OPTIMIZER_NAME),
                           self.args.should_save)
        elif self.args.should_save:
            torch.save(self.optimizer.state_dict(), os.path.join(output_dir, DISCRIMINATOR_OPTIMIZER_NAME))
        if self.replay is not None:  # every process saves its own buffer
            torch.save(self.replay.state_dict(), self.replay_path(output_dir))
        if self.args.should_save and self.lr_scheduler is not None:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, DISCRIMINATOR_SCHEDULER_NAME))

    # ------------------------------------------------------------------ resuming
    def load(self, checkpoint: str) -> None:
        """Restore weights, pooling, optimizer, replay buffer and schedule from a GAD checkpoint folder. Every file is
        loaded as data only (`weights_only`), never unpickled as code."""
        from .adapters import check_resume_layout, load_discriminator_adapter, saved_adapter_pooling
        from .sharding import load_optimizer, load_weights, optimizer_state_is_by_name

        disc_dir = os.path.join(checkpoint, DISCRIMINATOR_DIR)
        if not os.path.isdir(disc_dir):
            raise FileNotFoundError(
                f"{checkpoint} has no '{DISCRIMINATOR_DIR}/' folder: it was not written by GADTrainer, so the "
                "discriminator cannot be resumed. Resume from a GAD checkpoint, or start a new run."
            )
        check_resume_layout(self.model, disc_dir)
        if self.is_peft:
            self._resume_pooling(saved_adapter_pooling(disc_dir), checkpoint)
            load_discriminator_adapter(self.model, disc_dir)
        else:
            with replicated_loading(getattr(self.args, "deepspeed_plugin", None)):
                saved = load_value_model(disc_dir, num_labels=1, dtype=self.model.dtype)
            self._resume_pooling(discriminator_pooling(saved), checkpoint)
            if self.sharded:
                load_weights(self.model, saved.state_dict())
            else:
                self.model.load_state_dict(saved.state_dict())
            del saved
        optimizer_path = os.path.join(checkpoint, DISCRIMINATOR_OPTIMIZER_NAME)
        if not os.path.isfile(optimizer_path):
            logger.warning(f"{optimizer_path} is missing: the discriminator's optimizer restarts from scratch.")
        elif self.sharded:
            load_optimizer(self.model, self.optimizer, optimizer_path)
        else:
            state = load_checkpoint_file(optimizer_path, map_location=self.accelerator.device)
            if optimizer_state_is_by_name(state):
                raise ValueError(
                    f"{optimizer_path} holds a sharded discriminator's optimizer state (written with "
                    "discriminator_sharding='fsdp2', or 'auto' under FSDP / ZeRO-3): resume with the same sharding."
                )
            self.optimizer.load_state_dict(state)
        if self.replay is not None:
            replay_path = self.replay_path(checkpoint)
            if os.path.isfile(replay_path):
                self.replay.load_state_dict(load_checkpoint_file(replay_path))
            else:
                logger.warning(f"{replay_path} is missing: the discriminator's replay buffer restarts empty.")
        scheduler_path = os.path.join(checkpoint, DISCRIMINATOR_SCHEDULER_NAME)
        if os.path.isfile(scheduler_path) and self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(load_checkpoint_file(scheduler_path))
        elif self.lr_scheduler is not None:
            logger.warning(f"{scheduler_path} is missing: the discriminator's learning-rate schedule restarts from step 0.")

    def _resume_pooling(self, saved: str, checkpoint: str) -> None:
        """A resumed discriminator scores the way it was trained: the checkpoint's pooling, unless the config names
        another one, which is an error (the weights were fitted to the saved one)."""
        asked = self.args.discriminator_pooling
        if asked is not None and asked != saved:
            raise ValueError(
                f"{checkpoint} holds a discriminator trained with discriminator_pooling={saved!r}, but this run sets "
                f"discriminator_pooling={asked!r}. Resume with {saved!r} (or leave it unset), or start a new run."
            )
        set_discriminator_pooling(self.model, saved)


def _with_left_out(kept_scores: torch.Tensor, left_out_scores: torch.Tensor, left_out: list[int]) -> torch.Tensor:
    # One score per current completion, in the original order: the trained ones' and the left-out ones'.
    num_current = len(kept_scores) + len(left_out)
    is_left_out = torch.zeros(num_current, dtype=torch.bool, device=kept_scores.device)
    is_left_out[left_out] = True
    scores = torch.empty(num_current, dtype=kept_scores.dtype, device=kept_scores.device)
    scores[~is_left_out] = kept_scores
    scores[is_left_out] = left_out_scores.detach().to(kept_scores.device, kept_scores.dtype)
    return scores


def _replay_pairs(teacher_seqs, student_seqs, pairs: Pairs, response_starts) -> list[ReplayPair]:
    # One pair per completion (with k answers, its first): the buffer keeps past completions, not every pairing.
    num_teacher = len(teacher_seqs)
    return [
        ReplayPair(teacher_seqs[t], student, response_starts[t], response_starts[num_teacher + i])
        for i, (t, student) in enumerate(zip(pairs.primary_teacher(len(student_seqs)), student_seqs))
    ]

