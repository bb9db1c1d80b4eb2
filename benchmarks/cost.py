"""Cost benchmark: GAD step vs a GRPO step with a frozen reward model of the same size, and the discriminator's cost.

    .venv/bin/python -m benchmarks.cost            # CPU or CUDA (auto)
    .venv/bin/python -m benchmarks.cost --quick
    .venv/bin/python -m benchmarks.cost --vllm    # generation through a vLLM server (started for the run)
    .venv/bin/python -m benchmarks.cost --processes 2 --trainers grpo,gad,gad_sharded --skip-primitives
                                                  # 2 processes (torchrun, gloo on CPU): the sharded discriminator row
    .venv/bin/python -m benchmarks.cost --peft --skip-primitives   # LoRA / QLoRA / shared-base discriminators
    .venv/bin/python -m benchmarks.cost --vllm --pin --trainers grpo,gad,gad_async --skip-primitives
                                                  # async_generation: server on core 0, trainer on core 1
    .venv/bin/python -m benchmarks.cost --lora-sync --pin --skip-primitives
                                                  # a LoRA student: transformers generation vs vLLM with merged
                                                  # full-weight sync vs adapter-only sync (vllm_weight_sync='lora')

Part 1 (trainers, end to end). `GADTrainer` (GRPO phase: no warm-up) and TRL's `GRPOTrainer` with
`reward_funcs=AutoModelForSequenceClassification` built from the same checkpoint (so the reward model has exactly the
discriminator's size), same prompts, same batch, same generation length (every completion is forced to
`max_completion_length` tokens with `min_new_tokens`, so both trainers process identical shapes). Rounds alternate
GRPO, GAD, GRPO, GAD, ... each in a fresh subprocess (clean peak memory; alternation spreads machine-load drift over
both). Per step:
  - generation   = TRL's `transformers.generate` (or, with --vllm, `vLLM.generate`) profiling block
  - weight sync  = TRL's `sync_weights` block (--vllm: the student's weights pushed to the server each step)
  - rewards      = the trainer's `_calculate_rewards` (timed by a wrapper): the frozen RM's no-grad forward (GRPO), or GAD's whole
                   discriminator step (forward with grad, loss, backward, clip, AdamW step) whose detached scores are
                   the rewards
  - policy       = step time - `_prepare_inputs` (student forward/backward in `compute_loss`, optimizer step)
  - other        = `_prepare_inputs` - generation - weight sync - rewards (tokenisation, padding, advantages, metrics)
The timings come from TRL's own `profiling_context` blocks (collected by patching `ProfilingContext._log_metrics`),
the step time from a callback (`on_step_begin`/`on_step_end`); CUDA is synchronised at each boundary.

Part 2 (discriminator primitives, batches shaped like GAD's: B prompts x G completions, plus the teacher responses).
Each variant is one discriminator update producing the rewards, timed over several repeats after warm-up:
  - frozen RM scoring          no-grad forward over the B*G completions (what GRPO with a reward model pays)
  - GAD floor                  one forward with grad over B*G completions + B teacher responses, backward, AdamW step;
                               rewards = detached scores of that forward (the trainer's default path)
  - teacher scored G times     same, but each teacher response repeated for each of its G completions (2*B*G rows)
  - separate scoring pass      a no-grad forward over B*G + B rows for the rewards, then the training forward/backward
  - both (naive)               teacher G times and a separate scoring pass
Peak memory: CUDA `max_memory_allocated`; CPU peak RSS of a fresh subprocess per variant (minus the RSS after loading).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

from gad_trl.tiny import use_offline_env  # noqa: E402

use_offline_env()

RESULTS_DIR = Path(__file__).parent / "results"


# --peft rows: GAD with a LoRA / QLoRA discriminator (full student), and a LoRA student whose discriminator is a second
# adapter on its base, next to GRPO with the same LoRA student and a frozen RM.
PEFT_TRAINERS = ("grpo", "gad", "gad_lora", "gad_qlora", "grpo_lora", "gad_shared")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
# --lora-sync rows: the same LoRA student + shared-base discriminator (the 1-GPU recipe's layout), generating with
# transformers, or through one vLLM server (`--weight-sync lora`) receiving merged full weights (reload) or only the
# adapter (lora), synchronously or one step off.
LORA_SYNC_TRAINERS = ("lora_student_hf", "lora_student_merged", "lora_student_adapter", "lora_student_adapter_async")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    p.add_argument("--hidden-size", type=int, default=None, help="default: 256 on CPU, 1024 on CUDA")
    p.add_argument("--num-layers", type=int, default=None, help="default: 4 on CPU, 8 on CUDA")
    p.add_argument("--prompts", type=int, default=None, help="B: prompts per step (default 8 CPU / 32 CUDA)")
    p.add_argument("--num-generations", type=int, default=8, help="G")
    p.add_argument("--completion-length", type=int, default=None, help="C (default 32 CPU / 128 CUDA)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per round")
    p.add_argument("--warmup-steps", type=int, default=2, help="unmeasured steps at the start of each round")
    p.add_argument("--rounds", type=int, default=None, help="alternating GRPO/GAD rounds (subprocesses)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per primitive variant")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--trainers", default="grpo,gad,gad_separate,gad_ckpt",
                   help="grpo, gad, gad_separate (separate no-grad scoring pass), gad_ckpt (discriminator gradient "
                   "checkpointing), gad_sharded (discriminator sharded with FSDP2; needs --processes >= 2); grpo and "
                   "gad are required for the ratio")
    p.add_argument("--processes", type=int, default=1,
                   help="training processes per round (>1: torchrun, gloo on CPU; each process has its own batch of "
                   "B prompts x G completions; peak memory = the largest process's)")
    p.add_argument("--peft", action="store_true",
                   help="part 1 compares the PEFT discriminators: trainers grpo,gad,gad_lora,gad_qlora,grpo_lora,"
                   "gad_shared (a LoRA student's rows against GRPO with the same LoRA student + frozen RM)")
    p.add_argument("--vllm", action="store_true",
                   help="part 1 generates with a vLLM server (TRL server mode), started here for the run; both trainers "
                   "use the same server and weight sync")
    p.add_argument("--vllm-weight-sync", default="reload", choices=["reload", "nccl", "lora"],
                   help="reload (default: works on CPU and with the server on the trainer's own GPU) or nccl (the "
                   "server on another GPU: start it yourself and pass --vllm-url)")
    p.add_argument("--vllm-url", default=None, help="use this running server instead of starting one")
    p.add_argument("--server-max-num-seqs", type=int, default=None,
                   help="the vLLM server's --max-num-seqs (default: B*G with --lora-sync, so the server decodes the "
                   "whole generation batch at once; otherwise the launcher's CPU setting, 16, on CPU and vLLM's own on "
                   "CUDA)")
    p.add_argument("--lora-sync", action="store_true",
                   help="part 1 compares a LoRA student's generation paths: trainers " + ",".join(LORA_SYNC_TRAINERS)
                   + " (one vLLM server started with --weight-sync lora serves the vLLM rows)")
    p.add_argument("--pin", action="store_true",
                   help="pin the vLLM server to CPU core 0 and each trainer round to core 1 (an overlap benchmark on "
                        "2 cores: both work at once only when generation overlaps training)")
    p.add_argument("--skip-trainers", action="store_true")
    p.add_argument("--skip-primitives", action="store_true")
    p.add_argument("--workdir", default="/tmp/gad_bench_cost")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the report as the command that made it
    import torch

    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = a.device == "cuda"
    q = a.quick
    a.hidden_size = a.hidden_size or (1024 if gpu else (128 if q else 256))
    a.num_layers = a.num_layers or (8 if gpu else (2 if q else 4))
    a.prompts = a.prompts or (32 if gpu else (4 if q else 8))
    a.completion_length = a.completion_length or (128 if gpu else (16 if q else 32))
    a.steps = a.steps or (3 if q else 5)
    a.rounds = a.rounds or (1 if q else 2)
    a.repeats = a.repeats or (3 if q else 5)
    if a.peft:
        a.trainers = ",".join(PEFT_TRAINERS)
    if a.lora_sync:
        a.trainers, a.vllm, a.vllm_weight_sync = ",".join(LORA_SYNC_TRAINERS), True, "lora"
        a.server_max_num_seqs = a.server_max_num_seqs or a.prompts * a.num_generations
    suffix = ("_quick" if q else "") + ("_peft" if a.peft else "") + ("_vllm" if a.vllm else "")
    suffix += "_lora_sync" if a.lora_sync else ""
    suffix += "_async" if "gad_async" in a.trainers.split(",") else ""
    suffix += (f"_{a.processes}proc" if a.processes > 1 else "") + ("_cuda" if gpu else "_cpu")
    a.out = a.out or str(RESULTS_DIR / f"cost{suffix}.md")
    return a


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mb():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_checkpoint(a) -> str:
    from gad_trl.tiny import build_tiny_model, build_tiny_tokenizer

    path = Path(a.workdir) / f"model_h{a.hidden_size}_l{a.num_layers}"
    if not (path / "config.json").exists():
        tok = build_tiny_tokenizer()
        model = build_tiny_model(tok, seed=0, hidden_size=a.hidden_size, num_layers=a.num_layers)
        model.config.max_position_embeddings = 4096
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def rows(n, seed=0):
    from .tasks import get_tasks, make_split

    tasks = get_tasks()
    per = -(-n // len(tasks))
    out = make_split(tasks, per, seed=f"cost-{seed}")
    return [{"prompt": r["prompt"], "teacher_response": r["teacher_response"]} for r in out][:n]


# --------------------------------------------------------------------------------------------------------------------
# Part 1: trainers
# --------------------------------------------------------------------------------------------------------------------
def _trainer_round(kind: str, a_dict: dict, ckpt: str, queue):
    """One round in a subprocess: build the trainer, run warm-up + measured steps, report per-step timings."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging

    import trl.extras.profiling as prof

    hf_logging.set_verbosity_error()
    a = argparse.Namespace(**a_dict)
    if a.pin:
        os.sched_setaffinity(0, {1})  # the server holds core 0
    torch.set_num_threads(a.threads)
    device = a.device
    records: list[tuple[int, str, float]] = []
    state = {"step": 0}

    orig_enter, orig_exit = prof.ProfilingContext.__enter__, prof.ProfilingContext.__exit__

    def enter(self):
        _sync(device)
        return orig_enter(self)

    def exit_(self, *exc):
        _sync(device)
        return orig_exit(self, *exc)

    def log_metrics(self, duration):
        records.append((state["step"], self.name.split(".", 1)[1], duration))

    prof.ProfilingContext.__enter__ = enter
    prof.ProfilingContext.__exit__ = exit_
    prof.ProfilingContext._log_metrics = log_metrics

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, st, control, **kw):
            _sync(device)
            self.t0 = time.perf_counter()
            state["step"] = st.global_step

        def on_step_end(self, args, st, control, **kw):
            _sync(device)
            records.append((state["step"], "step", time.perf_counter() - self.t0))

    total = a.warmup_steps + a.steps
    B, G = a.prompts, a.num_generations
    common = dict(
        output_dir=str(Path(a.workdir) / f"out_{kind}"),
        per_device_train_batch_size=B * G,
        num_generations=G,
        gradient_accumulation_steps=1,
        max_steps=total,
        learning_rate=1e-6,
        beta=0.0,
        temperature=0.8,
        max_completion_length=a.completion_length,
        generation_kwargs={"min_new_tokens": a.completion_length},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=a.bf16,
        dataloader_num_workers=0,
        use_vllm=False,
    )
    if a.vllm:
        # vLLM's SamplingParams spell min_new_tokens `min_tokens`; every completion is C tokens on both trainers.
        common.update(use_vllm=True, vllm_mode="server", vllm_server_base_url=a.vllm_url, vllm_server_timeout=60,
                      generation_kwargs={"min_tokens": a.completion_length})
    ds = Dataset.from_list(rows(B * total))
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    peft_config = None
    if kind in ("grpo_lora", "gad_shared", *LORA_SYNC_TRAINERS):
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA)
    if kind == "lora_student_hf":  # the same run generating with transformers in the trainer process
        common.update(use_vllm=False, generation_kwargs={"min_new_tokens": a.completion_length})
    if kind in ("gad", "gad_async", "gad_separate", "gad_ckpt", "gad_sharded", "gad_lora", "gad_qlora", "gad_shared",
                *LORA_SYNC_TRAINERS):
        from gad_trl import GADConfig, GADTrainer

        # gad_separate: discriminator_mini_batch_size = all rows in one chunk, which makes the trainer score them in a
        # no-grad pass first and then re-run the forward with gradients (its bounded-memory path): the trainer-level
        # cost of *not* reusing the training forward for the rewards.
        # gad_ckpt: gradient checkpointing in the discriminator too (TRL's GRPOConfig checkpoints the policy by default).
        # The discriminator's checkpointing is explicit in every row (its default follows the policy's, which TRL
        # turns on), so the rows keep measuring what their names say.
        extra = {"discriminator_gradient_checkpointing": kind == "gad_ckpt",
                 "discriminator_sharding": "fsdp2" if kind == "gad_sharded" else "none"}
        if kind == "gad_separate":
            extra["discriminator_mini_batch_size"] = B * G + B
        if a.vllm:
            extra["vllm_weight_sync"] = a.vllm_weight_sync
        if kind in LORA_SYNC_TRAINERS:
            extra["vllm_weight_sync"] = "reload" if kind == "lora_student_merged" else "lora"
        if kind in ("gad_async", "lora_student_adapter_async"):  # one-step-off generation; truncated IS for the one-step-stale sampler (docs/vllm.md)
            extra.update(async_generation=True, vllm_importance_sampling_mode="token_truncate")
        if kind in ("gad_lora", "gad_qlora", "gad_shared", *LORA_SYNC_TRAINERS):
            extra.update(discriminator_lora_r=LORA["r"], discriminator_lora_alpha=LORA["lora_alpha"],
                         discriminator_lora_dropout=LORA["lora_dropout"],
                         discriminator_lora_target_modules=LORA["target_modules"])
            shared = kind == "gad_shared" or kind in LORA_SYNC_TRAINERS
            extra["discriminator_shared_base" if shared else "discriminator_use_peft"] = True
        if kind == "gad_qlora":  # a 4-bit base is loaded from a checkpoint (the student here is an instance)
            extra.update(discriminator_load_in_4bit=True, discriminator_model_name_or_path=ckpt)
        cfg = GADConfig(**common, discriminator_learning_rate=1e-6, **extra)
        trainer = GADTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    else:
        from trl import GRPOConfig, GRPOTrainer

        from gad_trl.vllm import patched_vllm_generation

        rm = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1)
        rm.config.pad_token_id = tok.pad_token_id
        cfg = GRPOConfig(**common)
        # The baseline syncs weights to the server the same way as GAD (reload works on CPU, where TRL's NCCL can't).
        cfg.vllm_weight_sync = a.vllm_weight_sync
        with patched_vllm_generation(cfg):
            trainer = GRPOTrainer(model=model, reward_funcs=[rm], args=cfg, train_dataset=ds, processing_class=tok,
                                  reward_processing_classes=[tok], peft_config=peft_config)
    trainer.add_callback(StepTimer())
    # Time the reward computation with one wrapper for both trainers (GAD's `_calculate_rewards` is the whole
    # discriminator step; GRPO's is the frozen RM's forward), independent of which profiling blocks each one has.
    inner = trainer._calculate_rewards

    def timed_rewards(*args_, **kwargs_):
        _sync(device)
        t = time.perf_counter()
        try:
            return inner(*args_, **kwargs_)
        finally:
            _sync(device)
            records.append((state["step"], "rewards_timer", time.perf_counter() - t))

    trainer._calculate_rewards = timed_rewards
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    trainer.train()
    # Aggregate measured steps
    per_step: dict[int, dict[str, float]] = {}
    for step, name, d in records:
        per_step.setdefault(step, {}).setdefault(name, 0.0)
        per_step[step][name] += d
    measured = [per_step[s] for s in sorted(per_step) if s >= a.warmup_steps]
    out = {"kind": kind, "steps": measured, "rss_before_train_mb": rss0, "peak_rss_mb": _peak_rss_mb()}
    if hasattr(trainer, "discriminator"):
        out["discriminator_state_mb"] = _discriminator_state_mb(trainer)
    out["sync_bytes"] = getattr(getattr(trainer, "vllm_generation", None), "last_sync_bytes", None)
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    lens = [h.get("completions/mean_length") for h in trainer.state.log_history if "completions/mean_length" in h]
    out["completion_mean_length"] = statistics.mean(lens) if lens else None
    queue.put(out)


class _FileQueue:
    """`queue.put` for a torchrun worker: each rank writes its result as JSON."""

    def __init__(self, path):
        self.path = path

    def put(self, obj):
        Path(self.path).write_text(json.dumps(obj))


def _torchrun_round(kind: str, a, ckpt: str) -> dict:
    """One round with `a.processes` processes under torchrun; rank 0's timings, the largest process's peak memory."""
    import subprocess

    from gad_trl.vllm.launcher import free_port

    work = Path(a.workdir) / f"torchrun_{kind}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps(vars(a), default=str))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.processes), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "benchmarks.cost", "--_worker", kind, ckpt,
               str(work)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).parent.parent)
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(a.processes)]
    out = ranks[0]
    for key in ("peak_rss_mb", "cuda_peak_mb"):
        if key in out:
            out[key] = max(r[key] for r in ranks)
    out["processes"] = a.processes
    return out


def _torchrun_worker(kind: str, ckpt: str, work: str) -> None:
    a_dict = json.loads((Path(work) / "args.json").read_text())
    rank = int(os.environ["RANK"])
    _trainer_round(kind, a_dict, ckpt, _FileQueue(Path(work) / f"rank{rank}.json"))


def _discriminator_state_mb(trainer) -> float:
    """Bytes this process holds for the discriminator's weights and AdamW states, counted from its tensors at the end
    of training (its local shards when sharded); gradients, freed after each step, add as much as the weights."""
    from torch.distributed.tensor import DTensor

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    weights = sum(local(p).nbytes for p in trainer.discriminator.parameters())
    states = sum(local(v).nbytes for st in trainer.discriminator_optimizer.state.values() for v in st.values()
                 if hasattr(v, "nbytes") and v.dim() > 0)
    return (weights + states) / 2**20


def _split(step: dict) -> dict:
    gen = sum(v for k, v in step.items() if k.startswith(("transformers.generate", "vLLM.generate")))
    sync = step.get("sync_weights", 0.0)  # vLLM server mode: pushing the student's weights to the server
    rew = step.get("rewards_timer", 0.0)
    prep = step.get("_prepare_inputs", 0.0)
    total = step["step"]
    return {"total": total, "generation": gen, "weight_sync": sync, "rewards": rew, "policy": total - prep,
            "other": prep - gen - sync - rew}


def run_trainers(a, ckpt):
    if a.vllm and a.vllm_url is None:
        from gad_trl.vllm import VLLMServer

        log = Path(a.workdir) / "vllm_server.log"
        print(f"  starting a vLLM server for {ckpt} (weight sync {a.vllm_weight_sync}; log {log})", flush=True)
        affinity = os.sched_getaffinity(0)
        if a.pin:
            os.sched_setaffinity(0, {0})  # inherited by the server and its workers
        try:
            extra_args = None
            if a.vllm_weight_sync == "lora" or a.server_max_num_seqs:
                from gad_trl.vllm.launcher import CPU_SERVER_ARGS
                from gad_trl.vllm.serve import lora_rank_for

                extra_args = (*(CPU_SERVER_ARGS if a.device == "cpu" else ()),)
                if a.vllm_weight_sync == "lora":
                    extra_args += ("--max-lora-rank", str(lora_rank_for(LORA["r"])))
                if a.server_max_num_seqs:  # the last --max-num-seqs wins
                    extra_args += ("--max-num-seqs", str(a.server_max_num_seqs))
            server = VLLMServer(ckpt, log, weight_sync=a.vllm_weight_sync, extra_args=extra_args).start()
        finally:
            os.sched_setaffinity(0, affinity)
        a.vllm_url = server.url
        try:
            return _run_trainers(a, ckpt)
        finally:
            server.kill()
            a.vllm_url = None
    return _run_trainers(a, ckpt)


def _run_trainers(a, ckpt):
    kinds = tuple(a.trainers.split(","))
    results = {k: [] for k in kinds}
    for r in range(a.rounds):
        for kind in kinds:
            if a.processes > 1:
                out = _torchrun_round(kind, a, ckpt)
            else:
                out = _subprocess(_trainer_round, kind, vars(a), ckpt)
            print(f"  round {r} {kind}: " + ", ".join(
                f"{k}={statistics.median(_split(s)[k] for s in out['steps']):.3f}s"
                for k in ("total", "generation", "weight_sync", "rewards", "policy")), flush=True)
            results[kind].append(out)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Part 2: discriminator primitives
# --------------------------------------------------------------------------------------------------------------------
VARIANTS = {
    "frozen_rm": "frozen RM scoring (GRPO's reward cost): no-grad fwd over B*G",
    "floor": "GAD floor: fwd+bwd over B*G + B (teacher once), rewards = detached scores",
    "teacher_xG": "teacher scored G times: fwd+bwd over 2*B*G",
    "separate_pass": "separate no-grad scoring pass + fwd+bwd over B*G + B",
    "naive": "teacher G times + separate scoring pass",
}


def _primitives(variants: list[str], a_dict: dict, ckpt: str, repeats: int, queue):
    """Time the variants interleaved (round-robin, so machine-load drift hits all alike) in one process; with one
    variant and repeats=1 it is the memory probe of that variant alone (fresh process: clean peak RSS)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from gad_trl.discriminator.model import score_sequences
    from gad_trl.discriminator.losses import discriminator_loss

    hf_logging.set_verbosity_error()
    a = argparse.Namespace(**a_dict)
    torch.set_num_threads(a.threads)
    device = a.device
    torch.manual_seed(0)
    disc = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=1).to(device)
    disc.config.pad_token_id = 0
    opt = torch.optim.AdamW(disc.parameters(), lr=1e-6)
    B, G, C = a.prompts, a.num_generations, a.completion_length
    vocab = disc.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    # Prompts of 24 tokens (like the tasks' chat prompts), student completions of C tokens, teacher responses of
    # C tokens (as long as the student's).
    P = 24
    prompts = [torch.randint(4, vocab, (P,), generator=gen).tolist() for _ in range(B)]
    students = [prompts[i // G] + torch.randint(4, vocab, (C,), generator=gen).tolist() for i in range(B * G)]
    teachers = [p + torch.randint(4, vocab, (C,), generator=gen).tolist() for p in prompts]
    index = torch.tensor([i // G for i in range(B * G)], device=device)

    def score(seqs):
        if a.bf16:
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                return score_sequences(disc, seqs, 0, device)
        return score_sequences(disc, seqs, 0, device)

    def run_once(variant):
        if variant == "frozen_rm":
            with torch.no_grad():
                return score(students)
        once = variant in ("floor", "separate_pass")
        teach = teachers if once else [teachers[i // G] for i in range(B * G)]
        idx = index if once else torch.arange(B * G, device=device)
        rewards = None
        if variant in ("separate_pass", "naive"):
            with torch.no_grad():
                rewards = score(teach + students)[len(teach):]
        scores = score(teach + students)
        loss, _ = discriminator_loss(scores[: len(teach)][idx], scores[len(teach):])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return scores[len(teach):].detach() if rewards is None else rewards

    rss0 = _rss_mb()
    for v in variants:  # warm-up (allocator, optimizer state)
        run_once(v)
        run_once(v)
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            _sync(device)
            t0 = time.perf_counter()
            run_once(v)
            _sync(device)
            times[v].append(time.perf_counter() - t0)
    out = {"times": times, "rss_before_mb": rss0, "peak_rss_mb": _peak_rss_mb()}
    if device == "cuda":
        out["cuda_peak_over_weights_mb"] = {}
        for v in variants:
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_alloc = torch.cuda.memory_allocated()
            run_once(v)
            torch.cuda.synchronize()
            out["cuda_peak_over_weights_mb"][v] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    queue.put(out)


def _subprocess(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    out = q.get()
    proc.join()
    return out


def run_primitives(a, ckpt):
    variants = list(VARIANTS)
    timed = _subprocess(_primitives, variants, vars(a), ckpt, a.repeats)
    res = {v: {"times": timed["times"][v]} for v in variants}
    if a.device == "cuda":
        for v in variants:
            res[v]["cuda_peak_over_weights_mb"] = timed["cuda_peak_over_weights_mb"][v]
    else:
        for v in variants:  # peak RSS of each variant alone, in a fresh process
            probe = _subprocess(_primitives, [v], vars(a), ckpt, 1)
            res[v]["peak_rss_mb"] = probe["peak_rss_mb"]
    for v in variants:
        print(f"  {v}: median {statistics.median(res[v]['times']):.4f}s", flush=True)
    return res


# --------------------------------------------------------------------------------------------------------------------
def _med(xs):
    return statistics.median(xs)


def lora_sync_section(a, trainers) -> list[str]:
    """Part 1 with --lora-sync: a LoRA student's step with transformers generation, vLLM + merged full-weight sync,
    vLLM + adapter-only sync (sync and one-step-off), and the size and time of each sync."""
    labels = {"lora_student_hf": "transformers generation (use_vllm=False)",
              "lora_student_merged": "vLLM, merged full weights each step (vllm_weight_sync='reload')",
              "lora_student_adapter": "vLLM, adapter only each step (vllm_weight_sync='lora')",
              "lora_student_adapter_async": "vLLM, adapter only, async_generation=True"}
    lines = ["## 1. A LoRA student: transformers generation vs vLLM with merged or adapter-only weight sync\n",
             f"Median over {a.steps} measured steps x {a.rounds} round(s) (after {a.warmup_steps} warm-up steps per "
             f"round), seconds per step. LoRA r={LORA['r']}, alpha={LORA['lora_alpha']}, `{LORA['target_modules']}` "
             "on the student; the discriminator is a second adapter on the student's base (discriminator_shared_base, "
             "the 1-GPU recipe's layout). One vLLM server (`gad-trl vllm-serve --weight-sync lora`) serves every vLLM "
             "row: the merged row reloads full weights into it, the adapter rows load only the adapter; its "
             f"--max-num-seqs is {a.server_max_num_seqs} (B*G: the whole generation batch decodes at once).\n",
             "| LoRA student | step | generation | weight sync | rewards (D step) | policy | other | bytes per sync "
             "| peak mem |", "|---|---|---|---|---|---|---|---|---|"]
    med = {}
    for kind, label in labels.items():
        if kind not in trainers:
            continue
        splits = [_split(s) for r in trainers[kind] for s in r["steps"]]
        med[kind] = m = {k: _med([s[k] for s in splits]) for k in splits[0]}
        sent = trainers[kind][0].get("sync_bytes")
        m["bytes"] = sent
        mem = (f"{max(r['cuda_peak_mb'] for r in trainers[kind]):.0f} MB CUDA" if a.device == "cuda"
               else f"{max(r['peak_rss_mb'] for r in trainers[kind]):.0f} MB RSS")
        lines.append(f"| {label} | {m['total']:.3f} | {m['generation']:.3f} | {m['weight_sync']:.3f} | "
                     f"{m['rewards']:.3f} | {m['policy']:.3f} | {m['other']:.3f} | "
                     f"{f'{sent / 2**20:.2f} MiB' if sent else '-'} | {mem} |")
    pinned = ("the vLLM server pinned to CPU core 0 and each trainer round to core 1 (`--pin`, one torch thread): "
              "the transformers row generates on the trainer's core" if a.pin else "no CPU pinning")
    lines += ["", f"Measured in one run ({pinned}), rounds alternating between the rows. The weight-sync column of the "
              "async row includes the wait for the background request (the sync waits for it first).\n"]
    hf, merged, adapter = (med.get(k) for k in LORA_SYNC_TRAINERS[:3])
    if hf and adapter:
        lines.append(f"adapter-only vLLM / transformers generation step: {adapter['total'] / hf['total']:.2f}x")
        # What no generation backend can beat here: the transformers step without its generation time.
        lines.append(f"transformers generation's share of its step: {hf['generation'] / hf['total']:.2f} (so no "
                     f"generation backend, synchronous or overlapped, can go below "
                     f"{1 - hf['generation'] / hf['total']:.2f}x here: the rest of the step stays)")
    if hf and med.get("lora_student_adapter_async"):
        lines.append("adapter-only vLLM, async / transformers generation step: "
                     f"{med['lora_student_adapter_async']['total'] / hf['total']:.2f}x")
    if merged and adapter and merged.get("bytes") and adapter.get("bytes"):
        lines.append(f"adapter sync / merged sync bytes: {adapter['bytes'] / merged['bytes']:.3f}x")
        lines.append(f"adapter sync / merged sync time: {adapter['weight_sync'] / merged['weight_sync']:.2f}x")
        lines.append(f"adapter-only vLLM / merged-weights vLLM step: {adapter['total'] / merged['total']:.2f}x")
    lines.append("")
    return lines


def report(a, ckpt, trainers, prims, wall, out_path):
    import torch

    lines = [f"# Cost benchmark ({a.device}{', quick' if a.quick else ''})\n"]
    dev = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU, {a.threads} torch thread(s)"
    n_params = None
    try:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(ckpt)
        n_params = f"hidden {c.hidden_size}, {c.num_hidden_layers} layers, vocab {c.vocab_size}"
    except Exception:
        pass
    procs = f", {a.processes} training processes (torchrun; gloo on CPU)" if a.processes > 1 else ""
    lines.append(f"Command: `python -m benchmarks.cost {' '.join(sys.argv[1:]) if a.argv is None else ' '.join(a.argv)}`"
                 f" (device {a.device}{procs}) on {dev}, {os.cpu_count()} CPU cores; wall time {wall / 60:.1f} min. Model: tiny Qwen2 ({n_params}); "
                 f"discriminator and reward model = the same checkpoint with a 1-output head. Batch: B={a.prompts} prompts "
                 f"x G={a.num_generations} completions of exactly C={a.completion_length} tokens ({'min_tokens' if a.vllm else 'min_new_tokens'}), "
                 f"fp32{' + bf16 autocast' if a.bf16 else ''}, beta=0. Generation: "
                 + ("per row (section 1).\n" if a.lora_sync else
                    f"a vLLM server (TRL server mode, `gad-trl vllm-serve`), weights pushed every step by "
                    f"`{a.vllm_weight_sync}` sync, the same for both trainers.\n" if a.vllm
                    else "transformers `generate` in the trainer process.\n"))
    if trainers and a.lora_sync:
        lines += lora_sync_section(a, trainers)
    elif trainers:
        lines.append("## 1. One training step: GAD vs GRPO with a frozen reward model\n")
        lines.append(f"Median over {a.steps} measured steps x {a.rounds} round(s) (after {a.warmup_steps} warm-up steps "
                     "per round), seconds per step.\n")
        lines.append("| trainer | step | generation | weight sync | rewards (D step / RM fwd) | policy | other | peak mem "
                     "| D weights + AdamW per process |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        med, peaks = {}, {}
        replicated = " (replicated discriminator)" if a.processes > 1 else ""
        labels = {"grpo": "GRPO + frozen RM", "gad": "GAD" + replicated,
                  "gad_async": "GAD, async_generation=True (one-step-off)",
                  "gad_separate": "GAD, separate no-grad scoring pass (discriminator_mini_batch_size=all)",
                  "gad_ckpt": "GAD, discriminator_gradient_checkpointing=True",
                  "gad_sharded": f"GAD, discriminator sharded (FSDP2 over {a.processes} processes)",
                  "gad_lora": "GAD, LoRA discriminator (discriminator_use_peft)",
                  "gad_qlora": "GAD, QLoRA discriminator (+ discriminator_load_in_4bit, nf4)",
                  "grpo_lora": "GRPO, LoRA student + frozen RM",
                  "gad_shared": "GAD, LoRA student + shared-base discriminator (discriminator_shared_base)"}
        for kind, label in labels.items():
            if kind not in trainers:
                continue
            splits = [_split(s) for r in trainers[kind] for s in r["steps"]]
            med[kind] = {k: _med([s[k] for s in splits]) for k in splits[0]}
            if a.device == "cuda":
                mem = f"{max(r['cuda_peak_mb'] for r in trainers[kind]):.0f} MB CUDA"
            else:
                mem = f"{max(r['peak_rss_mb'] for r in trainers[kind]):.0f} MB RSS"
            m = med[kind]
            lines.append(f"| {label} | {m['total']:.3f} | {m['generation']:.3f} | {m.get('weight_sync', 0.0):.3f} | "
                         f"{m['rewards']:.3f} | {m['policy']:.3f} | {m['other']:.3f} | {mem} | "
                         + (f"{trainers[kind][0]['discriminator_state_mb']:.0f} MB |"
                            if "discriminator_state_mb" in trainers[kind][0] else " |"))
            peaks[kind] = max(r.get("cuda_peak_mb", r["peak_rss_mb"]) for r in trainers[kind])
        g, d = med["grpo"], med["gad"]
        sync_ratio = f"{d['weight_sync'] / g['weight_sync']:.2f}x" if g.get("weight_sync") else ""
        lines.append(f"| **ratio GAD / GRPO** | **{d['total'] / g['total']:.2f}x** | {d['generation'] / g['generation']:.2f}x "
                     f"| {sync_ratio} | {d['rewards'] / g['rewards']:.2f}x | {d['policy'] / g['policy']:.2f}x | | "
                     f"{peaks['gad'] / peaks['grpo']:.2f}x | |")
        if "gad_async" in med:
            h = med["gad_async"]
            lines.append(f"| **ratio async GAD / GAD** | **{h['total'] / d['total']:.2f}x** | "
                         f"{h['generation'] / d['generation']:.2f}x | | {h['rewards'] / d['rewards']:.2f}x | "
                         f"{h['policy'] / d['policy']:.2f}x | | {peaks['gad_async'] / peaks['gad']:.2f}x | |")
        if "gad_sharded" in med:
            h = med["gad_sharded"]
            lines.append(f"| **ratio GAD sharded / GRPO** | **{h['total'] / g['total']:.2f}x** | "
                         f"{h['generation'] / g['generation']:.2f}x | | {h['rewards'] / g['rewards']:.2f}x | "
                         f"{h['policy'] / g['policy']:.2f}x | | {peaks['gad_sharded'] / peaks['grpo']:.2f}x | |")
            if a.device == "cpu":
                lines.append("")
                lines.append("On CPU the peak is the process's peak RSS: the interpreter and libraries, the student, its "
                             "reference and optimizer, the activations, the all-gathered layers and the allocator's "
                             "high-water mark; the last column counts the discriminator's own tensors.")
        for kind, base in (("gad_lora", "grpo"), ("gad_qlora", "grpo"), ("gad_shared", "grpo_lora")):
            if kind in med and base in med:
                k, b = med[kind], med[base]
                lines.append(f"| ratio {kind} / {base} | {k['total'] / b['total']:.2f}x | "
                             f"{k['generation'] / b['generation']:.2f}x | | {k['rewards'] / b['rewards']:.2f}x | "
                             f"{k['policy'] / b['policy']:.2f}x | | {peaks[kind] / peaks[base]:.2f}x | |")
        lines.append("")
        lines.append("Policy gradient checkpointing is on in every row (TRL's GRPOConfig default).\n")
        if any(k in med for k in ("gad_lora", "gad_qlora", "gad_shared")):
            lines.append(
                f"PEFT rows: LoRA r={LORA['r']}, alpha={LORA['lora_alpha']}, `{LORA['target_modules']}`, on the student "
                "(grpo_lora, gad_shared) and the discriminator; the value head is trained in full. gad_shared's "
                "discriminator runs on the student's backbone, so it is gradient-checkpointed like the policy, unlike "
                "the other GAD rows. Peak memory is the process's peak RSS (weights, optimizer states, activations and "
                "the Python/torch runtime alike); growth during training (peak - RSS after building the trainer): "
                + ", ".join(f"{k} {max(r['peak_rss_mb'] - r['rss_before_train_mb'] for r in trainers[k]):.0f} MB"
                            for k in labels if k in trainers and a.device != "cuda") + ".\n")
        sep = med.get("gad_separate")
        if sep:
            lines.append(f"Trainer-level gain of reusing the discriminator's training forward for the rewards: discriminator "
                         f"step {sep['rewards']:.4f}s with a separate scoring pass vs {d['rewards']:.4f}s reused "
                         f"({sep['rewards'] / d['rewards']:.2f}x); whole step {sep['total'] / d['total']:.2f}x.\n")
        if a.vllm:
            lines.append("Peak memory is the trainer process's only (the vLLM server runs in its own processes).\n")
        lines.append(f"Share of the GAD step: generation {100 * d['generation'] / d['total']:.0f}%, "
                     f"weight sync {100 * d['weight_sync'] / d['total']:.0f}%, discriminator "
                     f"{100 * d['rewards'] / d['total']:.0f}%, policy {100 * d['policy'] / d['total']:.0f}%, other "
                     f"{100 * d['other'] / d['total']:.0f}%. GAD's extra time per step over GRPO+RM: "
                     f"{d['total'] - g['total']:+.3f}s, of which discriminator-vs-RM {d['rewards'] - g['rewards']:+.3f}s.\n")
        if "gad_async" in med:
            h = med["gad_async"]
            pinned = ("the vLLM server pinned to CPU core 0 and the trainer to core 1 (`--pin`, one torch thread), "
                      "so generation and training each have one core" if a.pin else "no CPU pinning")
            lines.append(f"async_generation ({pinned}; one run, rounds alternating): in the async row the wait for the "
                         "background request is in the weight-sync column (the sync waits for it before pushing "
                         "weights), its generation column is the prefetched result's hand-over; the generation itself "
                         "ran while the discriminator and policy updated.\n")
            lines.append(f"async GAD / sync GRPO+RM step: {h['total'] / g['total']:.2f}x")
            lines.append(f"async GAD / sync GAD step: {h['total'] / d['total']:.2f}x\n")
        if prims:
            floor = _med(prims["floor"]["times"])
            lines.append(f"Discriminator step inside the trainer vs its floor (part 2, same shapes): "
                         f"{d['rewards']:.4f}s / {floor:.4f}s = **{d['rewards'] / floor:.2f}x** (the trainer's block also "
                         f"tokenises the teacher responses, builds pairs and logs metrics).\n")
    if prims:
        lines.append("## 2. Discriminator primitives (one update + rewards, shapes as in GAD)\n")
        lines.append(f"B={a.prompts}, G={a.num_generations}, prompt 24 + completion {a.completion_length} tokens; "
                     f"median of {a.repeats} repeats after 2 warm-up, variants interleaved round-robin in one process; "+("peak CUDA memory per variant alone (over the weights)" if a.device == "cuda" else "peak RSS of each variant alone in a fresh process")+".\n")
        mem_col = "peak CUDA over weights" if a.device == "cuda" else "peak RSS (process)"
        lines.append(f"| variant | rows scored with grad | median s (min) | median vs floor | {mem_col} |")
        lines.append("|---|---|---|---|---|")
        floor = _med(prims["floor"]["times"])
        B, G = a.prompts, a.num_generations
        rows_grad = {"frozen_rm": f"0 (+{B * G} no-grad)", "floor": f"{B * G + B}", "teacher_xG": f"{2 * B * G}",
                     "separate_pass": f"{B * G + B} (+{B * G + B} no-grad)", "naive": f"{2 * B * G} (+{2 * B * G} no-grad)"}
        for v, desc in VARIANTS.items():
            t = _med(prims[v]["times"])
            mem = (f"{prims[v]['cuda_peak_over_weights_mb']:.0f} MB" if a.device == "cuda"
                   else f"{prims[v]['peak_rss_mb']:.0f} MB")
            lines.append(f"| {desc} | {rows_grad[v]} | {t:.4f} ({min(prims[v]['times']):.4f}) | {t / floor:.2f}x | {mem} |")
        lines.append("")
        lines.append(
            f"Gain of scoring each teacher response once per prompt: {_med(prims['teacher_xG']['times']) / floor:.2f}x "
            f"faster than G times. Gain of reusing the training forward for the rewards: "
            f"{_med(prims['separate_pass']['times']) / floor:.2f}x faster than a separate scoring pass. Both: "
            f"{_med(prims['naive']['times']) / floor:.2f}x. The GAD floor costs "
            f"{floor / _med(prims['frozen_rm']['times']):.1f}x a frozen RM's scoring of the same completions.\n")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"args": vars(a), "trainers": trainers, "primitives": prims,
                                                    "wall_s": wall}, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


def main(argv=None):
    a = parse_args(argv)
    t0 = time.perf_counter()
    ckpt = build_checkpoint(a)
    trainers = prims = None
    if not a.skip_trainers:
        print("part 1: trainers", flush=True)
        trainers = run_trainers(a, ckpt)
    if not a.skip_primitives:
        print("part 2: discriminator primitives", flush=True)
        prims = run_primitives(a, ckpt)
    report(a, ckpt, trainers, prims, time.perf_counter() - t0, a.out)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--_worker"]:  # one rank of a --processes round (see _torchrun_round)
        _torchrun_worker(*sys.argv[2:5])
        sys.exit(0)
    sys.exit(main())
