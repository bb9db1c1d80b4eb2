"""GPU check: the shipped recipes on random weights of real model shapes, peak memory against the estimate, step time.

For each case it saves a random-weight model of a named real shape (the config built in code from the estimator's
table of public configs, `gad_trl.memory.estimator.KNOWN_ARCHITECTURES`: real hidden sizes, layers and vocabulary;
no Hub) with the tiny offline tokenizer of `gad_trl.tiny`, writes a local data set of prompts of
`--prompt-tokens` tokens, and runs the case's recipe (`recipes/`) with overrides through `gad-trl gad`'s own parser
and trainer builder (`gad_trl.cli.gad`; the final save is skipped) in a process of its own, with a time limit. It
writes, per case: peak CUDA memory allocated and reserved, the estimate for the same arguments
(`gad_trl.memory.estimator.estimate` in the recipe's mode, as `gad-trl estimate-memory` computes it), the step time
split into generation, weight sync, discriminator and policy (TRL's profiling timers: `transformers.generate*` /
`vLLM.generate`, `sync_weights`, `GADTrainer._calculate_rewards`; policy = the rest of the step) and completion
tokens/s, to `benchmarks/results/gpu_<name>.md` + `.json`.

    # Here, once: the wheels the device machine lacks, into the ignored .whl/ folder (benchmarks/gpu_real_lm.sh)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
      trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    # The device call (carry .whl): about 7 minutes with the default cases, each under its own limit
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
      PYTHONPATH=$PWD:/tmp/site python3 -m benchmarks.gpu_check --deadline-s 420 --out $OUT/gpu_h200
    # CPU, tiny shape (tests/benchmarks/test_gpu_check.py): the same path end to end in seconds
    python -m benchmarks.gpu_check --tiny --cases qwen2.5-7b-qlora

Generation is transformers' (the device machine has no vLLM). Random weights sample over the whole vocabulary, so
completions run to max_completion_length, the worst case the estimate assumes. With `--tiny` (CPU) the memory columns
are host-side and not comparable with the estimate; the run checks the path, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gad_trl.tiny import use_offline_env

use_offline_env()

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
RESULTS_DIR = Path(__file__).parent / "results"
GiB = 1024**3


@dataclass(frozen=True)
class Case:
    name: str
    shape: str  # a key of gad_trl.memory.estimator.KNOWN_ARCHITECTURES
    recipe: str  # under recipes/
    flags: tuple[str, ...] = ()
    limit_s: int = 150  # the case's process is stopped after this long
    measured_gib: float | None = None  # an earlier measurement of the same case (issue 29), for the report


# The issue-29 runs: max_steps 3, no warm-up, gradient accumulation 1, 256-token completions (COMMON below).
CASES = [
    Case("qwen2.5-7b-qlora", "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct/gad/config_lmsys_qlora.yaml",
         ("--per_device_train_batch_size", "8"), 170, 9.99),
    Case("qwen2.5-7b-shared-bf16", "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct/gad/config_lmsys_qlora.yaml",
         ("--per_device_train_batch_size", "8", "--load_in_4bit", "false"), 120, 20.67),
    Case("qwen2.5-1.5b-replicated", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct/gad/config_lmsys_lora.yaml",
         ("--per_device_train_batch_size", "16", "--use_peft", "false", "--discriminator_use_peft", "false"),
         100, 25.96),
    Case("qwen2.5-1.5b-lora", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct/gad/config_lmsys_lora.yaml",
         ("--per_device_train_batch_size", "16"), 80),
]
# The lent GPU has no vLLM (its wheel is too large to carry): every case generates with transformers, the QLoRA
# recipe's adapter-only vLLM sync included.
COMMON = ["--use_vllm", "false", "--critic_warmup_steps", "0", "--sft_warmup_steps", "0", "--gradient_accumulation_steps", "1",
          "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1",
          "--log_completions", "false", "--push_to_hub", "false", "--disable_tqdm", "true"]
TINY = ["--use_cpu", "true", "--bf16", "false"]  # the CPU smoke: float32, no GPU

# TRL's profiling timers (trl.extras.profiling, named "<trainer class>.<name>") by part of the step.
TIMERS = {
    "generation": (".transformers.generate", ".transformers.generate_batch", ".vLLM.generate"),
    "weight sync": (".sync_weights",),
    "discriminator": ("._calculate_rewards",),  # GAD's update + scoring, around TRL's own (nested, same name)
}


# ---------------------------------------------------------------------------------------------------------- setup
def save_shaped_model(path: Path, shape: str, tokenizer, device: str, **overrides) -> str:
    """A random-weight Qwen2 causal LM of a real shape (`KNOWN_ARCHITECTURES[shape]`, `overrides` on top: the tests
    keep one layer), built in bf16 on `device` (fast initialisation on a GPU) and saved with `tokenizer`, as
    `gad_trl.tiny.save_tiny_model` saves a tiny one. The tokenizer's vocabulary is smaller than the model's: ids
    beyond it, which a random model samples, decode to nothing."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    from gad_trl.memory.estimator import KNOWN_ARCHITECTURES

    if shape not in KNOWN_ARCHITECTURES:
        raise SystemExit(f"Unknown shape {shape!r}; choose from {', '.join(sorted(KNOWN_ARCHITECTURES))}.")
    config = Qwen2Config(**{**KNOWN_ARCHITECTURES[shape], **overrides}, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id],
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return str(path)


def write_data(path: Path, tokenizer, prompt_tokens: int, answer_words: int, rows: int = 64) -> int:
    """`train.jsonl` / `test.jsonl` of prompts `prompt_tokens` long once templated (the longest is returned) and
    teacher answers of `answer_words` words."""
    import random

    from gad_trl.tiny import _WORDS, write_jsonl

    rng = random.Random(0)
    out, longest = [], 0
    for _ in range(rows):
        words: list[str] = []
        while True:
            messages = [{"role": "user", "content": " ".join(words)}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
            if len(ids["input_ids"]) >= prompt_tokens:
                break
            words.append(rng.choice(_WORDS))
        longest = max(longest, len(ids["input_ids"]))
        answer = " ".join(rng.choice(_WORDS) for _ in range(answer_words))
        out.append({"prompt": messages, "teacher_response": answer})
    write_jsonl(out[: rows - 8], path / "train.jsonl")
    write_jsonl(out[rows - 8:], path / "test.jsonl")
    return longest


# ---------------------------------------------------------------------------------------------------------- worker
def run_case(spec: dict) -> dict:
    """One case in this process: parse as `gad-trl gad` does, estimate, train, measure."""
    import torch
    from transformers import TrainerCallback
    from trl.extras import profiling

    from gad_trl.cli.estimate_memory import count_models, settings_from_args
    from gad_trl.cli.gad import build_trainer, make_parser
    from gad_trl.cli.launch import command_line_checks
    from gad_trl.memory.estimator import estimate, load_model_config
    from gad_trl.memory.recipe import Launch, recipe_mode_of_args

    cuda = torch.cuda.is_available() and not spec["tiny"]
    script_args, training_args, model_args = make_parser().parse_args_and_config(command_line_checks(spec["argv"]))

    # The estimate for the same arguments, in the recipe's mode (as `gad-trl estimate-memory --config ...`).
    launch = Launch(None, None, "no launcher given")
    mode, why = recipe_mode_of_args(training_args, model_args, launch)
    student, discriminator = count_models(training_args, model_args)
    config, _ = load_model_config(model_args.model_name_or_path)
    settings = settings_from_args(script_args, training_args, model_args,
                                  argparse.Namespace(prompt_length=spec["prompt_length"]), config, 1,
                                  bool(training_args.bf16))
    settings = replace(settings, device="cuda" if cuda else "cpu")
    est = estimate(student, discriminator, settings, mode) if mode else None

    timers: list[tuple[int, str, float]] = []  # (step, timer, seconds)
    state = {"step": 0}
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration):  # TRL's timers go to W&B / MLflow only: keep them here too
        timers.append((state["step"], self.name, duration))
        return original(self, duration)

    profiling.ProfilingContext._log_metrics = record
    steps, logged = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, st, control, **kwargs):
            state["t0"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            steps.append(time.perf_counter() - state["t0"])
            state["step"] += 1

        def on_log(self, args, st, control, logs=None, **kwargs):
            logged.append(dict(logs or {}))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = build_trainer(script_args, training_args, model_args, callbacks=[Timer()])
    load_s = time.perf_counter() - t0
    trainer.train()
    result = {
        "mode": mode, "mode_reason": why, "load_s": load_s, "step_s": steps,
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "host_peak_rss": _peak_rss(),
        "estimate": est.to_dict() if est else None,
        "settings": asdict(settings),
        "timers": timers, "logs": logged,
        "completions_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps,
    }
    return result


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------------------- summary
def summarize(case: Case, result: dict) -> dict:
    """Per case: memory vs estimate, the mean step split over the steps after the first (step 1 warms up)."""
    out = {"case": case.name, "shape": case.shape, "recipe": case.recipe, "flags": list(case.flags),
           "status": result.get("status", "ok")}
    if out["status"] != "ok":
        return {**out, "detail": result.get("detail", "")}
    steps = result["step_s"]
    later = list(range(1, len(steps))) or list(range(len(steps)))
    split = {}
    for part, suffixes in TIMERS.items():
        # A timer nested in one of the same name (GADTrainer._calculate_rewards calls TRL's) counts once: the
        # longest of each name per step.
        longest: dict[tuple[int, str], float] = {}
        for s, n, d in result["timers"]:
            if s in later and n.endswith(suffixes):
                longest[(s, n)] = max(longest.get((s, n), 0.0), d)
        split[part] = sum(longest.values()) / len(later)
    step = sum(steps[i] for i in later) / len(later)
    split["policy"] = max(step - sum(split.values()), 0.0)
    lengths = [log["completions/mean_length"] for log in result["logs"] if "completions/mean_length" in log]
    tokens = (sum(lengths) / len(lengths) if lengths else 0.0) * result["completions_per_step"]
    est = result["estimate"]
    peak = result["peak_allocated"]
    out.update(
        mode=result["mode"], steps=len(steps), load_s=round(result["load_s"], 1), step_s=round(step, 2),
        split_s={k: round(v, 2) for k, v in split.items()},
        completion_tokens_per_step=round(tokens), tokens_per_s=round(tokens / step, 1) if step else None,
        generation_tokens_per_s=round(tokens / split["generation"], 1) if split["generation"] else None,
        peak_allocated_gib=None if peak is None else round(peak / GiB, 2),
        peak_reserved_gib=None if result["peak_reserved"] is None else round(result["peak_reserved"] / GiB, 2),
        host_peak_rss_gib=round(result["host_peak_rss"] / GiB, 2),
        estimate_gib=None if est is None else round(est["peak"] / GiB, 2),
        estimate_phase=None if est is None else est["peak_phase"],
        estimate_over_measured=None if (est is None or not peak) else round(est["peak"] / peak, 3),
        earlier_measured_gib=case.measured_gib,
    )
    return out


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"# GPU check: shipped recipes on random weights of real shapes ({header['device']})",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}; {header['seconds']} s. Prompts of {header['prompt_tokens']} tokens, "
        f"completions of {header['max_completion_length']} tokens, max_steps {header['max_steps']}, no warm-up, "
        "gradient accumulation 1, transformers generation. Step times: the mean over the steps after the first.",
        "",
        "| case | mode | peak allocated GiB | peak reserved GiB | estimate GiB (phase) | estimate / measured | "
        "step s | generation | weight sync | discriminator | policy | tokens/s | generation tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['status']}: {r.get('detail', '')[:200]} |" + " |" * 11)
            continue
        s = r["split_s"]
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['peak_allocated_gib']} | {r['peak_reserved_gib']} | "
            f"{r['estimate_gib']} ({r['estimate_phase']}) | {r['estimate_over_measured']} | {r['step_s']} | "
            f"{s['generation']} | {s['weight sync']} | {s['discriminator']} | {s['policy']} | {r['tokens_per_s']} | "
            f"{r['generation_tokens_per_s']} |"
        )
    if header["tiny"]:
        lines += ["", "Tiny shape on CPU: a smoke run of the path; no CUDA memory, so no ratio (host peak RSS is in "
                      "the JSON)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    p.add_argument("--tiny", action="store_true", help="CPU smoke: a tiny model instead of the real shapes")
    p.add_argument("--max-steps", type=int, default=None, help="default 3 (2 with --tiny)")
    p.add_argument("--prompt-tokens", type=int, default=None, help="default 161 (24 with --tiny)")
    p.add_argument("--max-completion-length", type=int, default=None, help="default 256 (16 with --tiny)")
    p.add_argument("--deadline-s", type=float, default=420, help="start no case that could end after this")
    p.add_argument("--workdir", default=None, help="models, data and runs (default: a temporary folder)")
    p.add_argument("--out", default=None, help="results stem (default results/gpu_cuda or results/gpu_tiny_cpu)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one case's spec (JSON file)
    a = p.parse_args(argv)
    a.max_steps = a.max_steps or (2 if a.tiny else 3)
    a.prompt_tokens = a.prompt_tokens or (24 if a.tiny else 161)
    a.max_completion_length = a.max_completion_length or (16 if a.tiny else 256)
    return a


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = run_case(spec)
    except Exception as err:  # noqa: BLE001  (reported in the table, not raised past the case)
        import traceback

        result = {"status": "failed", "detail": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    Path(spec["result"]).write_text(json.dumps(result))


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        _worker(a.worker)
        return 0
    import torch

    from gad_trl.tiny import build_tiny_tokenizer, save_tiny_model

    from .common import machine

    cuda = torch.cuda.is_available() and not a.tiny
    if not cuda and not a.tiny:
        raise SystemExit("No CUDA device: run on a GPU, or pass --tiny for the CPU smoke run.")
    t_start = time.perf_counter()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    data = work / "data"
    prompt_length = write_data(data, tokenizer, a.prompt_tokens, a.max_completion_length)
    cases = [c for c in CASES if c.name in a.cases]
    models: dict[str, str] = {}
    rows = []
    for case in cases:
        elapsed = time.perf_counter() - t_start
        if elapsed + case.limit_s > a.deadline_s:
            rows.append(summarize(case, {"status": "skipped", "detail": f"deadline ({elapsed:.0f} s used)"}))
            continue
        if case.shape not in models:  # one model per shape, shared by its cases
            target = work / "models" / case.shape.replace("/", "_")
            models[case.shape] = (save_tiny_model(target, tokenizer=tokenizer) if a.tiny
                                  else save_shaped_model(target, case.shape, tokenizer, "cuda"))
        case_argv = ["--config", str(RECIPES / case.recipe), "--model_name_or_path", models[case.shape],
                "--dataset_name", str(data), "--output_dir", str(work / "runs" / case.name),
                "--max_steps", str(a.max_steps), "--max_completion_length", str(a.max_completion_length),
                *COMMON, *(TINY if a.tiny else []), *case.flags]
        spec = {"argv": case_argv, "tiny": a.tiny, "prompt_length": prompt_length,
                "result": str(work / f"{case.name}.result.json")}
        spec_path = work / f"{case.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        limit = min(case.limit_s, max(a.deadline_s - elapsed, 1)) * (4 if a.tiny else 1)
        print(f"[{case.name}] {' '.join(case_argv)}", flush=True)
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--worker", str(spec_path)],
                                  cwd=ROOT, timeout=limit, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            result = (json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).exists()
                      else {"status": "failed", "detail": f"worker exited {proc.returncode} without a result"})
        except subprocess.TimeoutExpired:
            result = {"status": "timed out", "detail": f"after {limit:.0f} s"}
        if result.get("traceback"):
            print(result["traceback"], file=sys.stderr)
        row = summarize(case, result)
        print(f"[{case.name}] {json.dumps(row)}", flush=True)
        rows.append(row)
    seconds = round(time.perf_counter() - t_start)
    device = "tiny shape, CPU" if a.tiny else torch.cuda.get_device_name(0)
    header = {"command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "device": device, "seconds": seconds, "tiny": a.tiny,
              "prompt_tokens": prompt_length, "max_completion_length": a.max_completion_length,
              "max_steps": a.max_steps}
    out = a.out or str(RESULTS_DIR / ("gpu_tiny_cpu" if a.tiny else "gpu_cuda"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".md").write_text(markdown(rows, header))
    Path(out + ".json").write_text(json.dumps({**header, "cases": rows}, indent=2))
    print(f"wrote {out}.md and {out}.json ({seconds} s)")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
