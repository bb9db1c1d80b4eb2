"""Quality benchmark: synthetic black-box distillation on CPU, before / SeqKD / GAD, judged by rules.

    .venv/bin/python -m benchmarks.quality            # full run (3 seeds)
    .venv/bin/python -m benchmarks.quality --quick    # smaller run
    .venv/bin/python -m benchmarks.quality --vllm --methods gad,gad_async   # GAD generating on a vLLM server,
                                                      # synchronous and one-step-off (async_generation)

Setup (all offline, all measured; see benchmarks/README.md):
- Teacher: programs (benchmarks/tasks.py) that answer prompts of several task kinds. Only their *text* is used.
- Student: a tiny Qwen2 pre-trained from random init on a *weaker teacher* (the same task programs with one word
  corrupted in 30% of the answers and the last word dropped in 70%) over prompts disjoint from the train/eval prompts,
  so it knows the formats but stops early and makes mistakes, like an instruct model before distillation.
- Methods, all from that same student: SeqKD (TRL SFTTrainer on the teacher text), SeqKD-long (SFT for as many
  epochs as GAD trains in total: a compute-matched control), GAD (GADTrainer: critic warm-up, SFT warm-up, then GRPO on
  discriminator rewards).
- Judge: the tasks' rule-based judges on held-out prompts, greedy decoding (score in [0, 1]; teacher = 1 by
  construction, measured as a sanity check).
- Discriminator held-out accuracy: a fixed set of (prompt, teacher answer, student answer) triples, the student
  answers sampled once (T=0.8, fixed seed) from the starting student; accuracy = fraction with D(teacher) > D(student).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .common import (
    RESULTS_DIR,
    build_tokenizer,
    disc_scores,
    evaluate,
    generate,
    mean_std,
    peak_rss_mb,
    pretrain_lr,
    pretrain_student,
    seed_everything,
)
from .tasks import check_held_out, get_tasks, make_split, with_k_answers


def _gad_default(name: str):
    """A GADConfig field's default: the suite's GAD runs what ships unless a flag says otherwise."""
    from gad_trl import GADConfig

    return GADConfig.__dataclass_fields__[name].default


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller run: fewer prompts, steps and seeds")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0,1)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all registered)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated, from: " + ", ".join(METHOD_LABELS) + " (gad_after_long and sft_after_long "
                   "start from SeqKD-long's student and need seqkd_long; soda starts from SeqKD's and needs seqkd)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--vllm", action="store_true",
                   help="GAD methods generate on a CPU vLLM server (one per seed, reload weight sync), as gad_async "
                        "must; without it they generate with transformers in the trainer")
    p.add_argument("--workdir", default="/tmp/gad_bench_quality")
    p.add_argument("--reuse-base", action="store_true",
                   help="reuse a pre-trained student found in --workdir with the same settings")
    p.add_argument("--title", default=None, help="report heading (default: 'Quality benchmark[ (quick)]')")
    p.add_argument("--out", default=None, help="markdown results file (default benchmarks/results/quality[_quick].md)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no training: merge the seeds of these result files (runs of the same settings split over "
                   "processes or machines, e.g. --seeds 0 / --seeds 1,2) into one report at --out")
    # sizes
    p.add_argument("--n-train", type=int, default=None, help="train prompts per task")
    p.add_argument("--n-eval", type=int, default=None, help="eval prompts per task")
    p.add_argument("--n-disc", type=int, default=None, help="held-out discriminator triples per task")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=None)
    # schedule
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--critic-warmup-steps", type=int, default=None)
    p.add_argument("--sft-warmup-epochs", type=float, default=1.0)
    p.add_argument("--gad-epochs", type=float, default=None, help="epochs of the GRPO phase")
    p.add_argument("--lr", type=float, default=3e-5, help="student LR (SeqKD, and GAD's SFT warm-up and GRPO phases)")
    p.add_argument("--gad-lr", type=float, default=None, help="student LR in GAD (default --lr)")
    p.add_argument("--disc-lr", type=float, default=3e-4, help="discriminator LR")
    p.add_argument("--disc-loss", default="bradley_terry")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient of GAD's GRPO phase")
    p.add_argument("--disc-pooling", default="last", choices=["last", "mean"], help="GADConfig.discriminator_pooling")
    p.add_argument("--disc-replay", type=int, default=0, help="GADConfig.discriminator_replay_buffer_size (0 = off)")
    p.add_argument("--disc-iterations", type=int, default=1, help="GADConfig.discriminator_num_iterations")
    p.add_argument("--disc-replay-ratio", type=float, default=0.5, help="GADConfig.discriminator_replay_ratio")
    p.add_argument("--disc-replay-mode", default="add", choices=["add", "replace"],
                   help="GADConfig.discriminator_replay_mode (replace: replayed pairs take the place of current ones)")
    p.add_argument("--sft-loss-coef", type=float, default=_gad_default("sft_loss_coef"),
                   help="GADConfig.sft_loss_coef of the GRPO phase (default: GADConfig's)")
    p.add_argument("--disc-reward-weight", type=float, default=1.0,
                   help="TRL reward_weights of the discriminator's reward column; 0 = zero advantages, so the GRPO "
                   "phase learns only from sft_loss_coef's term (the control that isolates what the rewards add)")
    p.add_argument("--disc-hidden-size", type=int, default=None,
                   help="initialise the discriminator from a separately pre-trained student of this width (pre-trained "
                   "the same way, cached in --workdir) instead of the student itself")
    p.add_argument("--disc-num-layers", type=int, default=None, help="layers of that discriminator (default: student's)")
    p.add_argument("--k-answers", type=int, default=4,
                   help="teacher answers per prompt of gad_k4 / seqkd_long_k4 (distinct where the task's teacher has "
                   "that many, else repeated: benchmarks.tasks.teacher_answers)")
    p.add_argument("--soda-lr", type=float, default=3e-5, help="DPO learning rate of the soda row")
    p.add_argument("--soda-beta", type=float, default=0.1, help="DPO beta of the soda row")
    p.add_argument("--soda-epochs", type=float, default=None,
                   help="DPO epochs of the soda row (default --gad-epochs: SeqKD's epoch + these = GAD's passes)")
    p.add_argument("--soda-temperature", type=float, default=1.0,
                   help="temperature of SODA's rejected samples (SODAConfig.rejected_temperature's default)")
    p.add_argument("--pretrain-lr-rule", default="width", choices=["width", "fixed"],
                   help="student pre-training LR: 'width' = 2e-3 x min(1, 128 / hidden) with a 10%% warm-up "
                   "(benchmarks.common.pretrain_lr); 'fixed' = the former 2e-3 at every width, 50 warm-up steps")
    p.add_argument("--pretrain-probe", default=None, metavar="HIDDENS",
                   help="no distillation: pre-train seed 0's student at these comma-separated widths and report the "
                   "final loss (to --out, default results/quality_pretrain_<rule>.json)")
    p.add_argument("--size-trend", nargs="+", default=None, metavar="JSON",
                   help="no training: a size-trend report (GAD - SeqKD-long, GAD - gad_no_reward per width) from "
                   "these result files, one width each (--pretrain-before: the 'fixed' rule's probe JSON)")
    p.add_argument("--pretrain-before", nargs="+", default=None, metavar="JSON",
                   help="probe JSONs of the former pre-training rule (--size-trend), their widths together")
    p.add_argument("--trajectory-every", type=int, default=0,
                   help="every N optimizer steps, judge the student (greedy, the eval prompts) and record its mean "
                   "length, for seqkd_long, gad and gad_frozen; plotted to <out>.png (0 = off)")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    a = p.parse_args(argv)
    q = a.quick
    a.seeds = [int(s) for s in (a.seeds or ("0,1" if q else "0,1,2")).split(",")]
    a.n_train = a.n_train or (40 if q else 96)
    a.n_eval = a.n_eval or (30 if q else 50)
    a.n_disc = a.n_disc or (16 if q else 32)
    a.pretrain_steps = a.pretrain_steps or (500 if q else 800)
    a.critic_warmup_steps = (10 if q else 20) if a.critic_warmup_steps is None else a.critic_warmup_steps
    a.gad_epochs = a.gad_epochs if a.gad_epochs is not None else (1.0 if q else 2.0)
    a.gad_lr = a.gad_lr or a.lr
    a.soda_epochs = a.gad_epochs if a.soda_epochs is None else a.soda_epochs
    a.methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in a.methods if m not in METHOD_LABELS]
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHOD_LABELS)}")
    if "gad_async" in a.methods and not a.vllm:
        p.error("gad_async generates on a vLLM server: add --vllm (then every GAD method uses the server alike)")
    if {"gad_after_long", "sft_after_long"} & set(a.methods) and "seqkd_long" not in a.methods:
        p.error("gad_after_long / sft_after_long start from SeqKD-long's student: add seqkd_long to --methods")
    if "soda" in a.methods and "seqkd" not in a.methods:
        p.error("soda starts from SeqKD's student: add seqkd to --methods")
    if (a.disc_num_layers is not None) and a.disc_hidden_size is None:
        a.disc_hidden_size = a.hidden_size
    if a.disc_hidden_size is not None and a.disc_num_layers is None:
        a.disc_num_layers = a.num_layers
    a.out = a.out or str(RESULTS_DIR / ("quality_quick.md" if q else "quality.md"))
    return a


METHOD_LABELS = {
    "seqkd": "SeqKD",
    "seqkd_long": "SeqKD-long",
    "seqkd_long_k4": "SeqKD-long on k teacher answers per prompt",
    "soda": "SODA (DPO: teacher answer vs the SeqKD student's sample)",
    "gad": "GAD",
    "gad_no_reward": "GAD with the discriminator's reward weight 0 (D still trained)",
    "gad_k4": "GAD with k teacher answers per prompt",
    "gad_async": "GAD, async_generation (one-step-off generation)",
    "gad_frozen": "GAD, discriminator frozen after the warm-up",
    "gad_after_long": "GAD from the SeqKD-long student",
    "sft_after_long": "SFT continued from the SeqKD-long student",
}
GAD_METHODS = ("gad", "gad_no_reward", "gad_k4", "gad_async", "gad_frozen", "gad_after_long")
DEFAULT_METHODS = ("seqkd", "seqkd_long", "soda", "gad", "gad_no_reward", "gad_k4", "seqkd_long_k4")
K_METHODS = ("gad_k4", "seqkd_long_k4")  # trained on k teacher answers per prompt


class TrajectoryCallback:
    """Every `every` optimizer steps: the student's greedy judge score and mean answer length on the eval prompts."""

    def __new__(cls, *args, **kwargs):  # a transformers TrainerCallback, imported lazily like the rest of the file
        from transformers import TrainerCallback

        class _Trajectory(TrainerCallback):
            def __init__(self, tok, tasks_by_name, rows, every, max_new_tokens, step_offset=0):
                self.tok, self.tasks, self.rows, self.every = tok, tasks_by_name, rows, every
                self.max_new_tokens, self.step_offset, self.points = max_new_tokens, step_offset, []

            def _measure(self, model, step):
                side = self.tok.padding_side  # generate() pads left; the trainer's tokenizer is the same object
                was_training = model.training
                scores, _ = evaluate(model, self.tok, self.tasks, self.rows, max_new_tokens=self.max_new_tokens)
                model.train(was_training)
                self.tok.padding_side = side
                self.points.append({"step": step - self.step_offset, "judge": scores["mean"], "len": scores["len"]})

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                self._measure(model, state.global_step)

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                    self._measure(model, state.global_step)

        return _Trajectory(*args, **kwargs)


def _row_subset(rows):
    return [{"prompt": r["prompt"], "teacher_response": r["teacher_response"]} for r in rows]


def _answers(row) -> list[str]:
    a = row["teacher_response"]
    return list(a) if isinstance(a, list) else [a]


def run_seqkd(base_dir, tok, train_rows, epochs, args, seed, out_dir, callbacks=()):
    """SFT on the teacher text. Rows with k answers give k examples each, and a step takes `prompts_per_step` x k
    examples, so every answer is seen once an epoch and the optimizer steps equal the one-answer run's."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    k = max(len(_answers(r)) for r in train_rows)
    ds = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": a}]} for r in train_rows
         for a in _answers(r)]
    )
    cfg = SFTConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts_per_step * k,
        num_train_epochs=epochs,
        learning_rate=args.lr,
        logging_steps=10,
        **run_kwargs(seed, args),
    )
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=list(callbacks))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return trainer.model, {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
                           "steps": trainer.state.global_step}


def run_kwargs(seed: int, args=None) -> dict:
    """`cpu_run_kwargs`, on `args.device` (the real-model suite's GPU mode) where one is given."""
    device = getattr(args, "device", "cpu")
    gpu = {} if device == "cpu" else {"gradient_checkpointing": False}  # small models on a large card: no recompute
    return {**cpu_run_kwargs(seed), "use_cpu": device == "cpu", **gpu,
            **({"bf16": True} if getattr(args, "bf16", False) else {})}


def cpu_run_kwargs(seed: int) -> dict:
    """Settings SeqKD and GAD share: constant LR, clip 1.0, no saving or reporting, CPU, quiet."""
    return dict(
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        seed=seed,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )


def run_soda(start_dir, tok, train_rows, args, seed, out_dir):
    """SODA: DPO (TRL `DPOTrainer`, reference = the start) on `build_soda_dataset`'s pairs: the teacher's answer
    chosen, one sample of the starting student (T=args.soda_temperature) rejected. The cost counts the sampling."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from gad_trl.baselines.soda import build_soda_dataset

    cache = Path(out_dir) / "_soda_rejected.jsonl"
    if cache.exists():
        cache.unlink()  # drawn from an earlier run's start: sample anew
    cache.parent.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    sampler_model = AutoModelForCausalLM.from_pretrained(start_dir).to(getattr(args, "device", "cpu"))
    pairs = build_soda_dataset(_row_subset(train_rows), sampler_model, tok, temperature=args.soda_temperature,
                               max_new_tokens=args.max_completion_length, seed=seed, cache_path=str(cache))
    del sampler_model
    sample_s, sample_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    cfg = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts_per_step,
        num_train_epochs=args.soda_epochs,
        learning_rate=args.soda_lr,
        beta=args.soda_beta,
        logging_steps=10,
        **run_kwargs(seed, args),
    )
    model = AutoModelForCausalLM.from_pretrained(start_dir)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=pairs, processing_class=tok)
    t1, c1 = time.perf_counter(), time.process_time()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    return trainer.model, {
        "train_s": sample_s + time.perf_counter() - t1, "train_cpu_s": sample_cpu_s + time.process_time() - c1,
        "sample_cpu_s": sample_cpu_s, "steps": trainer.state.global_step, "pairs": len(pairs),
        "rejected_equals_chosen": sum(p["chosen"][0]["content"] == p["rejected"][0]["content"] for p in pairs) / len(pairs),
        "dpo_reward_accuracy_last": logs[-1]["rewards/accuracies"] if logs else None,
        "schedule": f"{len(pairs)} pairs, {args.soda_epochs:g} ep DPO, lr {args.soda_lr:g}, beta {args.soda_beta:g}",
    }


def run_gad(base_dir, tok, train_rows, args, seed, out_dir, sft_epochs=None, freeze=False, disc_dir=None,
            callbacks=(), server_url=None, async_generation=False, reward_weight=None, **extra_config):
    """GAD on `train_rows` (critic warm-up, SFT warm-up, GRPO); `extra_config`: further GADConfig fields (the levers
    of the real-model suite)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from gad_trl import GADConfig, GADTrainer

    steps_per_epoch = max(1, len(train_rows) // args.prompts_per_step)
    sft_steps = round((args.sft_warmup_epochs if sft_epochs is None else sft_epochs) * steps_per_epoch)
    gad_steps = round(args.gad_epochs * steps_per_epoch)
    max_steps = args.critic_warmup_steps + sft_steps + gad_steps
    cfg = GADConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations,
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        learning_rate=args.gad_lr,
        beta=args.beta,
        temperature=args.temperature,
        max_completion_length=args.max_completion_length,
        critic_warmup_steps=args.critic_warmup_steps,
        sft_warmup_steps=sft_steps,
        discriminator_learning_rate=args.disc_lr,
        discriminator_lr_scheduler_type="constant",
        discriminator_loss_type=args.disc_loss,
        discriminator_pooling=args.disc_pooling,
        discriminator_replay_buffer_size=args.disc_replay,
        discriminator_num_iterations=args.disc_iterations,
        discriminator_replay_ratio=args.disc_replay_ratio,
        discriminator_replay_mode=args.disc_replay_mode,
        sft_loss_coef=args.sft_loss_coef,
        reward_weights=[args.disc_reward_weight if reward_weight is None else reward_weight],
        discriminator_model_name_or_path=disc_dir,
        discriminator_freeze_after_step=args.critic_warmup_steps + sft_steps if freeze else None,
        logging_steps=5,
        **run_kwargs(seed, args),
        **extra_config,
        **(dict(use_vllm=True, vllm_mode="server", vllm_server_base_url=server_url, vllm_weight_sync="reload",
                vllm_server_timeout=60, async_generation=async_generation,
                vllm_importance_sampling_mode="token_truncate") if server_url else dict(use_vllm=False)),
    )
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = GADTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(_row_subset(train_rows)),
                         processing_class=tok, callbacks=list(callbacks))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    info = {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
            "steps": trainer.state.global_step,
            "schedule": f"{args.critic_warmup_steps} critic + {sft_steps} SFT + {gad_steps} GRPO steps"}
    logs = [h for h in trainer.state.log_history if "discriminator/accuracy" in h]
    if logs:
        last = logs[-1]
        info["train_d_acc_last"] = last.get("discriminator/accuracy")
        info["train_score_diff_last"] = last.get("discriminator/score_diff")
        info["completion_len_last"] = last.get("completions/mean_length")
        info["log"] = [
            {k: h.get(k) for k in ("step", "discriminator/accuracy", "discriminator/score_diff", "reward_std",
                                   "completions/mean_length", "sft/loss", "loss") if k in h}
            for h in logs
        ]
    return trainer.model, trainer.discriminator, info


def evaluate_both(model, tok, tasks_by_name, eval_rows, args):
    """Greedy judge scores, plus the mean judge score of one sampled answer per prompt (T=args.temperature, fixed
    seed) under the key `sampled`."""
    scores, _ = evaluate(model, tok, tasks_by_name, eval_rows, max_new_tokens=args.max_completion_length)
    sampled, _ = evaluate(model, tok, tasks_by_name, eval_rows, max_new_tokens=args.max_completion_length,
                          do_sample=True, temperature=args.temperature, seed=4321)
    scores["sampled"] = sampled["mean"]
    return scores


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def disc_judge_agreement(disc, tok, tasks_by_name, rows, answers) -> float:
    """Spearman correlation between the discriminator's score of a student answer and the judge's score of it: does
    the GAD reward track what the judge measures?"""
    d = disc_scores(disc, tok, [r["prompt_text"] for r in rows], answers).tolist()
    j = [tasks_by_name[r["task"]].judge(r["prompt_text"], a) for r, a in zip(rows, answers)]
    return _spearman(d, j)


def disc_judge_within_prompt(disc, model, tok, tasks_by_name, rows, args, k: int = 8, cache: dict | None = None) -> dict:
    """Mean over prompts of the Spearman correlation between D's and the judge's scores of `k` answers sampled from
    `model` for that one prompt (T=args.temperature, fixed seed). This is the ranking GRPO acts on: its advantages
    only compare the completions of one prompt, so a pooled correlation over prompts of different tasks mixes in
    offsets the reward never uses. Prompts whose answers the judge (or D) scores all alike rank nothing and are left
    out; `ranked` is the fraction kept."""
    prompts = [r["prompt_text"] for r in rows for _ in range(k)]
    if cache is not None and id(model) in cache:  # the same student's samples (fixed seed): drawn once
        answers = cache[id(model)]
    else:
        answers = generate(model, tok, prompts, do_sample=True, temperature=args.temperature, seed=2468,
                           max_new_tokens=args.max_completion_length)
        if cache is not None:
            cache[id(model)] = answers
    d = disc_scores(disc, tok, prompts, answers).tolist()
    groups = [(d[i * k : (i + 1) * k], [tasks_by_name[r["task"]].judge(r["prompt_text"], a)
                                        for a in answers[i * k : (i + 1) * k]]) for i, r in enumerate(rows)]
    from gad_trl.workflow.agreement import within_prompt_auc

    auc = within_prompt_auc(groups)  # pairs of one prompt's completions that the judge tells apart
    return {**within_prompt_spearman(groups), "auc": auc["auc"], "auc_pairs": auc["pairs"],
            "auc_prompts": auc["prompts"]}


def within_prompt_spearman(groups: list[tuple[list[float], list[float]]]) -> dict:
    """`groups`: (D's scores, the judge's scores) of the answers to one prompt each. `mean`: the mean of the groups'
    Spearman correlations; a group where either side is constant ranks nothing and is left out (`ranked`: the
    fraction kept)."""
    rhos = [rho for rho in (_spearman(d, j) for d, j in groups) if rho == rho]  # NaN: a constant side
    return {"mean": statistics.mean(rhos) if rhos else float("nan"), "ranked": len(rhos) / len(groups)}


def heldout_disc_accuracy(disc, tok, triples) -> float:
    prompts = [p for p, _, _ in triples]
    t = disc_scores(disc, tok, prompts, [tt for _, tt, _ in triples])
    s = disc_scores(disc, tok, prompts, [ss for _, _, ss in triples])
    return (t > s).float().mean().item()


def _pretrained_base(args, tok, tasks, seed, base_dir, reserved, hidden_size, num_layers):
    """Pre-train a student on the weaker teacher (or reuse one with the same settings under --reuse-base)."""
    base_dir = str(base_dir)
    key = json.dumps({"seed": seed, "steps": args.pretrain_steps, "hidden": hidden_size, "layers": num_layers,
                      "tasks": sorted(t.name for t in tasks), "reserved": len(reserved),
                      "lr": pretrain_lr(hidden_size, args.pretrain_lr_rule, steps=args.pretrain_steps)})
    marker = Path(base_dir) / "pretrain_key.json"
    if args.reuse_base and marker.exists() and json.loads(marker.read_text())["key"] == key:
        return base_dir, json.loads(marker.read_text())["info"]  # same settings: reuse the pre-trained student
    info = pretrain_student(tok, tasks, seed, base_dir, reserved, steps=args.pretrain_steps,
                            hidden_size=hidden_size, num_layers=num_layers, lr_rule=args.pretrain_lr_rule)
    marker.write_text(json.dumps({"key": key, "info": info}))
    return base_dir, info


def merge_runs(args, paths):
    """One report from several result files of the same settings (their seeds together)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keep = ("seeds", "out", "workdir", "reuse_base", "merge", "title")
    first = {k: v for k, v in runs[0]["args"].items() if k not in keep}
    for path, run in zip(paths[1:], runs[1:]):
        other = {k: v for k, v in run["args"].items() if k not in keep}
        if other != first:
            diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
            raise SystemExit(f"{path} was run with other settings than {paths[0]} ({', '.join(diff)}): not merged.")
    results = {"args": runs[0]["args"], "seeds": {}, "teacher": runs[0]["teacher"],
               "wall_s": sum(r.get("wall_s", 0.0) for r in runs),
               "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in runs), "merged_from": list(paths)}
    for run in runs:
        for seed, res in run["seeds"].items():
            if seed in results["seeds"]:
                raise SystemExit(f"seed {seed} appears in more than one of {paths}.")
            results["seeds"][seed] = res
    results["seeds"] = dict(sorted(results["seeds"].items(), key=lambda kv: int(kv[0])))
    for k, v in runs[0]["args"].items():
        if k not in ("out", "title", "merge") and hasattr(args, k):
            setattr(args, k, v)
    args.seeds = [int(s) for s in results["seeds"]]
    results["args"]["seeds"] = args.seeds
    write_report(args, get_tasks(args.tasks), results)
    return results


def _splits(args, tasks):
    train_rows = make_split(tasks, args.n_train, seed="train")
    train_prompts = {r["prompt_text"] for r in train_rows}
    eval_rows = make_split(tasks, args.n_eval, seed="eval", exclude=train_prompts)
    disc_rows = make_split(tasks, args.n_disc, seed="disc-heldout", exclude=train_prompts)
    return train_rows, eval_rows, disc_rows


def pretrain_probe(args):
    """Pre-train seed 0's student at each width of --pretrain-probe with --pretrain-lr-rule; final loss per width."""
    import torch

    torch.set_num_threads(args.threads)
    tasks = get_tasks(args.tasks)
    tok = build_tokenizer()
    train_rows, eval_rows, disc_rows = _splits(args, tasks)
    reserved = {r["prompt_text"] for r in train_rows + eval_rows + disc_rows}
    out = Path(args.out if args.out.endswith(".json") else RESULTS_DIR / f"quality_pretrain_{args.pretrain_lr_rule}.json")
    results = {"rule": args.pretrain_lr_rule, "steps": args.pretrain_steps, "widths": {}}
    for h in [int(x) for x in args.pretrain_probe.split(",")]:
        # Saved as a run of this width would save it (<workdir>/w<h>/base_0 with its key), so a later run with
        # --workdir <workdir>/w<h> --hidden-size <h> --reuse-base starts from this student instead of pre-training again.
        _, info = _pretrained_base(args, tok, tasks, 0, Path(args.workdir) / f"w{h}" / "base_0", reserved, h,
                                   args.num_layers)
        results["widths"][str(h)] = info
        print(h, {k: v for k, v in info.items() if k != "loss_curve"}, flush=True)
        out.write_text(json.dumps(results, indent=1))
    return results


def size_trend(args):
    """GAD − SeqKD-long and GAD − gad_no_reward per student width, from one result file per width."""
    runs = sorted((json.loads(Path(p).read_text()) for p in args.size_trend), key=lambda r: r["args"]["hidden_size"])
    before = {}
    for path in args.pretrain_before or []:
        before.update(json.loads(Path(path).read_text())["widths"])
    lines = [f"# {args.title or 'Quality benchmark: size trend'}\n",
             "Student (and discriminator, initialised from it) width against the two gaps that say what GAD's "
             "discriminator adds: GAD − SeqKD-long (epoch-matched SFT) and GAD − gad_no_reward (the same GAD run with "
             "the discriminator's reward weight 0). Paired per-seed differences, mean ± std over the seeds each width "
             "ran (one seed: std 0). Judge score, greedy and sampled (T=0.8).\n",
             "| hidden | seeds | train prompts / task | GAD greedy | SeqKD-long greedy | gad_no_reward greedy | GAD − SeqKD-long (greedy) | "
             "GAD − gad_no_reward (greedy) | GAD − SeqKD-long (sampled) | GAD − gad_no_reward (sampled) | GAD AUC | "
             "GAD train CPU s |", "|" + "---|" * 12]
    for run in runs:
        seeds = run["seeds"]
        cells = [str(run["args"]["hidden_size"]), ",".join(seeds), str(run["args"]["n_train"])]
        for m in ("gad", "seqkd_long", "gad_no_reward"):
            cells.append(_fmt(_vals(run, m, "mean")))
        for key in ("mean", "sampled"):
            for ref in ("seqkd_long", "gad_no_reward"):
                cells.append(_fmt([r["gad"][key] - r[ref][key] for r in seeds.values() if "gad" in r and ref in r]))
        cells.append(_fmt(_vals(run, "gad", "d_judge_auc")))
        cells.append(f"{statistics.mean(r['gad']['train_cpu_s'] for r in seeds.values()):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Student pre-training (seed 0 where it ran; mean of the last 50 steps' loss), the former rule "
              "(`--pretrain-lr-rule fixed`: LR 2e-3 and 50 warm-up steps at every width) against the current one "
              "(`width`: LR 2e-3 x min(1, 128 / hidden), warm-up 50 x max(1, hidden / 128) steps):\n",
              "| hidden | final loss, fixed rule | final loss, width rule | LR, warm-up (width rule) |", "|---|---|---|---|"]
    for run in runs:
        h = str(run["args"]["hidden_size"])
        pt = next(iter(run["seeds"].values()))["pretrain"]
        old = before.get(h, {})
        steps = run["args"]["pretrain_steps"]
        if pretrain_lr(int(h), "fixed") == pretrain_lr(int(h), "width", steps=steps):
            old_cell = "the same (the rules agree at this width)"
        elif old.get("final_loss") is not None:
            old_cell = f"{old['final_loss']:.3f}"
        elif old.get("stopped_at_step"):  # a probe stopped early (for time): its loss over its last steps, and ours
            lo, hi = old["window"]
            new = [v for i, v in enumerate(pt.get("loss_curve", [])) if lo <= i * 50 < hi]
            old_cell = (f"not run to the end (stopped at step {old['stopped_at_step']}): {old['window_loss']:.3f} over "
                        f"steps {lo}-{hi}, where the width rule had {statistics.mean(new):.3f}" if new else "")
        else:
            old_cell = ""
        lines.append(f"| {h} | {old_cell} | {pt['final_loss']:.3f} | "
                     f"{pt.get('lr', float('nan')):.2g}, {pt.get('warmup_steps', '')} |")
    lines.append("\nSources: " + ", ".join(f"`{Path(p).name}`" for p in args.size_trend)
                 + "".join(f", `{Path(p).name}`" for p in args.pretrain_before or []) + ".\n")
    out = Path(args.out)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return runs


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge_runs(args, args.merge)
    if args.size_trend:
        return size_trend(args)
    if args.pretrain_probe:
        return pretrain_probe(args)
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    t_start = time.perf_counter()
    tasks = get_tasks(args.tasks)
    tasks_by_name = {t.name: t for t in tasks}
    tok = build_tokenizer()
    train_rows = make_split(tasks, args.n_train, seed="train")
    train_prompts = {r["prompt_text"] for r in train_rows}
    eval_rows = make_split(tasks, args.n_eval, seed="eval", exclude=train_prompts)
    disc_rows = make_split(tasks, args.n_disc, seed="disc-heldout", exclude=train_prompts)
    check_held_out(train_prompts, eval_rows, "--n-eval")
    check_held_out(train_prompts, disc_rows, "--n-disc")
    reserved = train_prompts | {r["prompt_text"] for r in eval_rows} | {r["prompt_text"] for r in disc_rows}
    teacher_scores = {
        **{k: statistics.mean(tasks_by_name[k].judge(r["prompt_text"], r["teacher_response"]) for r in eval_rows
                              if r["task"] == k) for k in tasks_by_name}
    }
    teacher_scores["mean"] = statistics.mean(teacher_scores[k] for k in tasks_by_name)

    train_rows_k, k_stats = with_k_answers(train_rows, tasks_by_name, args.k_answers)
    work = Path(args.workdir)
    results = {"args": {k: v for k, v in vars(args).items()}, "seeds": {}}
    if any(m in K_METHODS for m in args.methods):
        results["k_answers"] = k_stats
        print(f"k answers: {k_stats}", flush=True)
    for seed in args.seeds:
        print(f"=== seed {seed}", flush=True)
        res = {}
        base_dir, info = _pretrained_base(args, tok, tasks, seed, work / f"base_{seed}", reserved, args.hidden_size,
                                          args.num_layers)
        print(f"  pretrain {info}", flush=True)
        res["pretrain"] = info
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        res["before"] = evaluate_both(base, tok, tasks_by_name, eval_rows, args)
        print(f"  before {res['before']}", flush=True)
        # Fixed held-out discriminator triples: the starting student's answers, sampled once with a fixed seed.
        student_answers = generate(base, tok, [r["prompt_text"] for r in disc_rows], do_sample=True,
                                   temperature=args.temperature, seed=1234, max_new_tokens=args.max_completion_length)
        triples = [(r["prompt_text"], r["teacher_response"], a) for r, a in zip(disc_rows, student_answers)]
        res["triples_identical_to_teacher"] = sum(t == s for _, t, s in triples) / len(triples)

        disc_dir = None
        if args.disc_hidden_size is not None:
            disc_dir = _pretrained_base(args, tok, tasks, seed, work / f"disc_base_{seed}_{args.disc_hidden_size}x"
                                        f"{args.disc_num_layers}", reserved, args.disc_hidden_size, args.disc_num_layers)
            res["disc_pretrain"] = disc_dir[1]
            disc_dir = disc_dir[0]

        def traj(step_offset=0):
            if not args.trajectory_every:
                return []
            return [TrajectoryCallback(tok, tasks_by_name, eval_rows, args.trajectory_every,
                                       args.max_completion_length, step_offset)]

        def finish_sft(name, m, info, callbacks):
            res[name] = evaluate_both(m, tok, tasks_by_name, eval_rows, args)
            res[name].update(info)
            if callbacks:
                res[name]["trajectory"] = callbacks[0].points
            print(f"  {name} {res[name]}", flush=True)

        seqkd_dir = str(work / f"seqkd_{seed}" / "final")
        if "seqkd" in args.methods:
            seed_everything(seed)
            m, info = run_seqkd(base_dir, tok, train_rows, args.sft_warmup_epochs, args, seed, str(work / f"seqkd_{seed}"))
            m.save_pretrained(seqkd_dir)
            tok.save_pretrained(seqkd_dir)
            finish_sft("seqkd", m, info, [])
        if "soda" in args.methods:
            # SODA starts from the SeqKD student (an SFT'd student, as in the paper; GAD's own SFT warm-up is the
            # same 1 epoch) and samples its rejected answers from it.
            seed_everything(seed)
            m, info = run_soda(seqkd_dir, tok, train_rows, args, seed, str(work / f"soda_{seed}"))
            info["start_cpu_s"] = res["seqkd"]["train_cpu_s"]
            finish_sft("soda", m, info, [])
        long_dir = str(work / f"seqkdl_{seed}" / "final")
        if "seqkd_long" in args.methods:
            seed_everything(seed)
            total_epochs = args.sft_warmup_epochs + args.gad_epochs
            cbs = traj()
            m, info = run_seqkd(base_dir, tok, train_rows, total_epochs, args, seed, str(work / f"seqkdl_{seed}"), cbs)
            m.save_pretrained(long_dir)
            tok.save_pretrained(long_dir)
            finish_sft("seqkd_long", m, info, cbs)
        if "seqkd_long_k4" in args.methods:
            seed_everything(seed)
            m, info = run_seqkd(base_dir, tok, train_rows_k, args.sft_warmup_epochs + args.gad_epochs, args, seed,
                                str(work / f"seqkdl_k_{seed}"))
            finish_sft("seqkd_long_k4", m, info, [])
        if "sft_after_long" in args.methods:
            seed_everything(seed)
            m, info = run_seqkd(long_dir, tok, train_rows, args.gad_epochs, args, seed, str(work / f"sftal_{seed}"))
            finish_sft("sft_after_long", m, info, [])
        start_samples = {}  # the starting student's within-prompt samples, shared by the GAD rows of this seed
        server = None
        if args.vllm and any(name in args.methods for name in GAD_METHODS):
            from gad_trl.vllm import VLLMServer

            # One server per seed; each GAD run pushes its student's weights at its first step.
            server = VLLMServer(base_dir, work / f"vllm_{seed}.log", weight_sync="reload").start()
        try:
            for name in GAD_METHODS:
                if name not in args.methods:
                    continue
                seed_everything(seed)
                start, sft_epochs = (long_dir, 0.0) if name == "gad_after_long" else (base_dir, None)
                cbs = traj(args.critic_warmup_steps) if name != "gad_after_long" else []
                rows = train_rows_k if name in K_METHODS else train_rows
                m, disc, info = run_gad(start, tok, rows, args, seed, str(work / f"{name}_{seed}"), sft_epochs=sft_epochs,
                                        freeze=name == "gad_frozen", disc_dir=disc_dir, callbacks=cbs,
                                        server_url=server.url if server else None,
                                        async_generation=name == "gad_async",
                                        reward_weight=0.0 if name == "gad_no_reward" else None)
                m.to("cpu")
                disc.to("cpu")
                res[name] = evaluate_both(m, tok, tasks_by_name, eval_rows, args)
                res[name].update({k: v for k, v in info.items() if k != "log"})
                if cbs:
                    res[name]["trajectory"] = cbs[0].points
                res[name]["heldout_d_acc"] = heldout_disc_accuracy(disc, tok, triples)
                # Also against the final GAD student's own (fresh, fixed-seed) samples on the same prompts.
                final_answers = generate(m, tok, [r["prompt_text"] for r in disc_rows], do_sample=True,
                                         temperature=args.temperature, seed=1234, max_new_tokens=args.max_completion_length)
                res[name]["final_student_d_acc"] = heldout_disc_accuracy(
                    disc, tok, [(r["prompt_text"], r["teacher_response"], a) for r, a in zip(disc_rows, final_answers)]
                )
                res[name]["d_judge_spearman"] = disc_judge_agreement(disc, tok, tasks_by_name, disc_rows, student_answers)
                # The same on the final student's samples: does the reward rank the answers GAD ends up producing?
                res[name]["d_judge_spearman_final"] = disc_judge_agreement(disc, tok, tasks_by_name, disc_rows, final_answers)
                # Within one prompt (what GRPO's advantages compare), on 8 samples of the starting and of the final student.
                for key, student in (("start", base), ("final", m)):
                    within = disc_judge_within_prompt(disc, student, tok, tasks_by_name, disc_rows, args,
                                                      cache=start_samples if key == "start" else None)
                    res[name][f"d_judge_spearman_within_{key}"] = within["mean"]
                    res[name][f"d_judge_within_ranked_{key}"] = within["ranked"]
                    # gad_trl.workflow.agreement.within_prompt_auc: the final D on the final student's samples is
                    # `d_judge_auc` (the report's column); the starting student's is kept for comparison.
                    auc_key = "d_judge_auc" if key == "final" else "d_judge_auc_start"
                    res[name][auc_key] = within["auc"]
                    res[name][f"{auc_key}_pairs"] = within["auc_pairs"]
                res[f"{name}_log" if name != "gad" else "gad_log"] = info.get("log", [])
                print(f"  {name} {res[name]}", flush=True)
        finally:
            if server is not None:
                server.kill()
        results["seeds"][seed] = res
        # Written after every seed, so a run stopped early keeps its finished seeds (mergeable with --merge).
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results, indent=1, default=str))

    results["teacher"] = teacher_scores
    results["wall_s"] = time.perf_counter() - t_start
    results["peak_rss_mb"] = peak_rss_mb()
    write_report(args, tasks, results)
    return results


def write_report(args, tasks, results):
    names = [t.name for t in tasks]
    seeds = list(results["seeds"])
    methods = ["before"] + [m for m in METHOD_LABELS if m in args.methods]
    long_ep = args.sft_warmup_epochs + args.gad_epochs
    labels = {"before": "before (pre-trained student)", "seqkd": f"SeqKD ({args.sft_warmup_epochs:g} ep SFT)",
              "seqkd_long": f"SeqKD-long ({long_ep:g} ep SFT, epoch-matched to GAD)",
              "gad": "GAD (critic + SFT warm-up + GRPO)",
              "gad_no_reward": "GAD, discriminator reward weight 0 (D trained, unused)",
              "gad_k4": f"GAD, k={args.k_answers} teacher answers per prompt",
              "seqkd_long_k4": f"SeqKD-long on k={args.k_answers} teacher answers per prompt",
              "soda": f"SODA (SeqKD student + {args.soda_epochs:g} ep DPO)",
              "gad_async": "GAD, async_generation (one-step-off generation)",
    "gad_frozen": "GAD, discriminator frozen after the warm-up",
              "gad_after_long": f"SeqKD-long student + GAD (critic warm-up + {args.gad_epochs:g} ep GRPO)",
              "sft_after_long": f"SeqKD-long student + {args.gad_epochs:g} ep more SFT"}
    lines = []
    title = args.title or ("Quality benchmark (quick)" if args.quick else "Quality benchmark")
    lines.append(f"# {title}\n")
    argv = " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("quality.py") else ("--quick" if args.quick else "")
    reused = " (pre-trained students reused from the work dir: `--reuse-base`)" if args.reuse_base else ""
    lines.append(f"Command: `.venv/bin/python -m benchmarks.quality{' ' + argv if argv else ''}`{reused} "
                 f"(wall time {results['wall_s'] / 60:.1f} min on CPU, {args.threads} thread(s), peak RSS "
                 f"{results['peak_rss_mb']:.0f} MB). Seeds: {seeds}. Judge score in [0, 1], greedy decoding, "
                 f"{args.n_eval} held-out prompts per task; mean ± std over seeds.\n")
    if results.get("merged_from"):
        lines.append("Merged (`--merge`) from runs of the same settings: "
                     + ", ".join(f"`{Path(p).name}`" for p in results["merged_from"]) + "; wall time = their sum.\n")
    header = "| method | " + " | ".join(names) + " | **mean** | mean, sampled T=0.8 | mean length (tokens) |"
    lines.append(header)
    lines.append("|" + "---|" * (len(names) + 4))
    t = results["teacher"]
    lines.append("| teacher (program) | " + " | ".join(f"{t[n]:.3f}" for n in names) + f" | {t['mean']:.3f} | | |")
    for m in methods:
        cells = []
        for n in names + ["mean", "sampled", "len"]:
            mu, sd = mean_std([results["seeds"][s][m][n] for s in seeds])
            cells.append(f"{mu:.3f} ± {sd:.3f}" if n != "len" else f"{mu:.1f}")
        lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(summary_section(args, results, methods, labels))
    for gm in [m for m in GAD_METHODS if m in methods]:
        lines.append(f"Discriminator ({labels[gm]}) after training:\n")
        lines.append("| metric | mean ± std over seeds | per seed |")
        lines.append("|---|---|---|")
        for key, desc in (("heldout_d_acc", "held-out accuracy, fixed triples (starting student's samples)"),
                          ("final_student_d_acc", "held-out accuracy vs the final GAD student's samples"),
                          ("d_judge_spearman", "Spearman(D score, judge score) of the starting student's held-out samples"),
                          ("d_judge_spearman_final", "Spearman(D score, judge score) of the final student's held-out samples"),
                          ("d_judge_spearman_within_start", "within-prompt Spearman(D, judge), 8 samples a prompt, starting student"),
                          ("d_judge_spearman_within_final", "within-prompt Spearman(D, judge), 8 samples a prompt, final student"),
                          ("d_judge_auc_start", "within-prompt AUC(D, judge), 8 samples a prompt, starting student"),
                          ("d_judge_auc", "within-prompt AUC(D, judge), 8 samples a prompt, final student (`d_judge_auc`)"),
                          ("train_d_acc_last", "last logged training accuracy"),
                          ("train_score_diff_last", "last logged score_diff (t - s)")):
            vals = [results["seeds"][s][gm].get(key) for s in seeds]
            vals = [v for v in vals if v is not None]
            if vals:
                mu, sd = mean_std(vals)
                lines.append(f"| {desc} | {mu:.3f} ± {sd:.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")
        lines.append("")
    lines.append("Training cost per seed (`trainer.train()`: wall seconds, and CPU seconds of this process, which "
                 "other jobs on a shared machine do not inflate; trajectory evaluations included where enabled):\n")
    lines.append("| method | optimizer steps | train s (mean) | train CPU s (mean) |")
    lines.append("|---|---|---|---|")
    for m in methods[1:]:
        st = [results["seeds"][s][m]["steps"] for s in seeds]
        ts = [results["seeds"][s][m]["train_s"] for s in seeds]
        cs = [results["seeds"][s][m].get("train_cpu_s") for s in seeds]
        cpu = f"{statistics.mean(cs):.0f}" if None not in cs else ""
        extra = f" ({results['seeds'][seeds[0]][m]['schedule']})" if "schedule" in results["seeds"][seeds[0]][m] else ""
        lines.append(f"| {labels[m]} | {st[0]}{extra} | {statistics.mean(ts):.0f} | {cpu} |")
    pt = [results["seeds"][s]["pretrain"] for s in seeds]
    lines.append(f"| student pre-training (weaker teacher) | {args.pretrain_steps} | "
                 f"{statistics.mean(p['seconds'] for p in pt):.0f} |")
    lines.append("")
    lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in results["args"].items()
                                          if k not in ("out", "workdir", "quick")) + "\n")
    # GAD training trajectory of the first seed
    s0 = seeds[0]
    log = results["seeds"][s0].get("gad_log") or []
    if log:
        lines.append(f"GAD training log (seed {s0}; logged every 5 steps):\n")
        keys = [k for k in ("step", "discriminator/accuracy", "discriminator/score_diff", "reward_std",
                            "completions/mean_length", "sft/loss", "loss") if any(k in h for h in log)]
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for h in log:
            lines.append("| " + " | ".join("" if h.get(k) is None else f"{h[k]:.3g}" for k in keys) + " |")
        lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if any("trajectory" in results["seeds"][s].get(m, {}) for s in seeds for m in methods):
        png = plot_trajectories(results, methods, labels, out.with_suffix(".png"))
        lines.append(f"Judge score and mean length against the student's update step (GAD: after the critic "
                     f"warm-up), every {args.trajectory_every} steps, mean over seeds: [{png.name}]({png.name})\n")
        lines.extend(trajectory_table(results, methods, labels))
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


def _vals(results, method, key):
    vals = [res[method].get(key) for res in results["seeds"].values() if method in res]
    return [v for v in vals if v is not None]


def _fmt(vals, digits=3):
    if not vals:
        return "n/a"
    mu, sd = mean_std(vals)
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def cpu_cost(res_m: dict) -> float:
    """CPU seconds of a row's training, including the student it starts from where that is another row's (SODA:
    SeqKD's epoch). GAD rows include their own critic and SFT warm-up."""
    return res_m.get("train_cpu_s", 0.0) + res_m.get("start_cpu_s", 0.0)


TARGET_BASELINES = ("seqkd_long", "soda", "gad_no_reward")
LEVERS = (  # (row, reference row, what the difference isolates)
    ("gad", "gad_no_reward", "the discriminator's reward (same run, reward weight 0)"),
    ("gad", "seqkd_long", "GAD over epoch-matched SFT"),
    ("gad_k4", "gad", "k teacher answers per prompt, in GAD"),
    ("seqkd_long_k4", "seqkd_long", "k teacher answers per prompt, in SeqKD-long"),
    ("gad_k4", "seqkd_long_k4", "GAD over epoch-matched SFT, both on k answers"),
    ("soda", "seqkd", "SODA's DPO phase over its SeqKD start"),
    ("soda", "seqkd_long", "SODA over epoch-matched SFT"),
)


def target_check(results, methods) -> dict | None:
    """The suite's target: GAD's mean judge score above max(SeqKD-long, SODA, gad_no_reward) by more than the larger
    seed std of the two rows compared (GAD's and that best baseline's), greedy and sampled, with GAD's within-prompt
    reward-judge AUC (`d_judge_auc`) >= 0.65. None unless gad and every baseline ran."""
    if "gad" not in methods or any(b not in methods for b in TARGET_BASELINES):
        return None
    out = {}
    for key in ("mean", "sampled"):
        g_mu, g_sd = mean_std(_vals(results, "gad", key))
        best = max(TARGET_BASELINES, key=lambda b: mean_std(_vals(results, b, key))[0])
        b_mu, b_sd = mean_std(_vals(results, best, key))
        out[key] = {"gad": g_mu, "gad_std": g_sd, "best": best, "best_mean": b_mu, "best_std": b_sd,
                    "margin": g_mu - b_mu, "needed": max(g_sd, b_sd), "met": g_mu - b_mu > max(g_sd, b_sd)}
    aucs = _vals(results, "gad", "d_judge_auc")
    auc = statistics.mean(aucs) if aucs else float("nan")
    out["auc"] = {"mean": auc, "met": auc >= 0.65}
    out["met"] = out["mean"]["met"] and out["sampled"]["met"] and out["auc"]["met"]
    return out


def summary_section(args, results, methods, labels) -> list[str]:
    """Headline table (greedy, sampled, AUC, CPU s per row), the target check and the levers (paired differences)."""
    rows = [m for m in methods if m != "before"]
    lines = ["Summary (mean ± std over seeds; AUC: within-prompt reward-judge AUC of the final discriminator on 8 "
             "samples a prompt of the final student, `gad_trl.workflow.agreement.within_prompt_auc`; CPU s: "
             "`trainer.train()` per seed, SODA's including its rejected-sample drawing and its SeqKD start):\n",
             "| method | judge, greedy | judge, sampled T=0.8 | reward-judge AUC | train CPU s |", "|---|---|---|---|---|"]
    for m in ["before"] + rows:
        auc = _fmt(_vals(results, m, "d_judge_auc")) if m in GAD_METHODS else ""
        cpu = f"{statistics.mean(cpu_cost(r[m]) for r in results['seeds'].values()):.0f}" if m != "before" else ""
        lines.append(f"| {labels[m]} | {_fmt(_vals(results, m, 'mean'))} | {_fmt(_vals(results, m, 'sampled'))} | "
                     f"{auc} | {cpu} |")
    lines.append("")
    if results.get("k_answers") and any(m in K_METHODS for m in rows):
        k = results["k_answers"]
        per = ", ".join(f"{t} {v:.2f}" for t, v in k["per_task"].items())
        lines.append(f"k={k['k']} teacher answers per prompt (`benchmarks.tasks.with_k_answers`): "
                     f"{k['rows_with_duplicates']} of {k['rows']} train prompts needed duplicates; mean distinct "
                     f"answers per prompt {k['mean_distinct']:.2f} ({per}; a task with one valid answer repeats it).\n")
    check = target_check(results, methods)
    if check is not None:
        lines.append("**Target check** (GAD's mean above max(SeqKD-long, SODA, gad_no_reward) by more than the larger "
                     "seed std of the two, greedy and sampled, and GAD's AUC >= 0.65): "
                     + ("**met**" if check["met"] else "**not met**") + ".\n")
        for key, name in (("mean", "greedy"), ("sampled", "sampled")):
            c = check[key]
            lines.append(f"- {name}: GAD {c['gad']:.3f} ± {c['gad_std']:.3f}, best baseline {c['best']} "
                         f"{c['best_mean']:.3f} ± {c['best_std']:.3f}: margin {c['margin']:+.3f} against "
                         f"{c['needed']:.3f} needed ({'met' if c['met'] else 'not met'})")
        lines.append(f"- AUC: {check['auc']['mean']:.3f} ({'met' if check['auc']['met'] else 'not met'})\n")
        results["target_check"] = check
    levers = [(a, b, what) for a, b, what in LEVERS if a in rows and b in rows]
    if levers:
        lines.append("Levers: paired per-seed differences (row − reference), mean ± std over seeds:\n")
        lines.append("| row − reference | isolates | Δ greedy | Δ sampled | Δ CPU s |")
        lines.append("|---|---|---|---|---|")
        for a, b, what in levers:
            cells = []
            for key in ("mean", "sampled"):
                d = [r[a][key] - r[b][key] for r in results["seeds"].values() if a in r and b in r]
                cells.append(_fmt(d))
            dc = statistics.mean(cpu_cost(r[a]) - cpu_cost(r[b]) for r in results["seeds"].values() if a in r and b in r)
            lines.append(f"| {a} − {b} | {what} | {cells[0]} | {cells[1]} | {dc:+.0f} |")
        lines.append("")
    return lines


def _mean_trajectory(results, method):
    """Per step: mean over the seeds that measured it of (judge, len)."""
    by_step = {}
    for res in results["seeds"].values():
        for p in res.get(method, {}).get("trajectory", []):
            by_step.setdefault(p["step"], []).append((p["judge"], p["len"]))
    return [(k, statistics.mean(j for j, _ in v), statistics.mean(n for _, n in v)) for k, v in sorted(by_step.items())]


def trajectory_table(results, methods, labels) -> list[str]:
    lines = ["| method | step | judge (greedy) | mean length |", "|---|---|---|---|"]
    for m in methods:
        for step, judge, length in _mean_trajectory(results, m):
            lines.append(f"| {labels[m]} | {step} | {judge:.3f} | {length:.1f} |")
    return lines + [""]


def plot_trajectories(results, methods, labels, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_j, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        points = _mean_trajectory(results, m)
        if not points:
            continue
        steps = [p[0] for p in points]
        ax_j.plot(steps, [p[1] for p in points], marker="o", ms=3, label=labels[m])
        ax_l.plot(steps, [p[2] for p in points], marker="o", ms=3, label=labels[m])
    ax_j.set(xlabel="student update step", ylabel="judge score (greedy, eval prompts)", title="quality")
    ax_l.set(xlabel="student update step", ylabel="mean answer length (tokens)", title="length")
    ax_j.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
