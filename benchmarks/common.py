"""Shared helpers of the benchmarks: student pre-training, generation, judging and discriminator scoring."""

from __future__ import annotations

import random
import resource
import statistics
import time
from pathlib import Path

from gad_trl.tiny import use_offline_env  # noqa: E402

use_offline_env()

import torch  # noqa: E402

from gad_trl.data import prompt_ids, teacher_completion_ids  # noqa: E402
from gad_trl.data import prompt_text as templated_prompt  # noqa: E402
from gad_trl.discriminator.model import score_sequences  # noqa: E402
from gad_trl.end_of_turn import end_of_turn_token_id  # noqa: E402
from gad_trl.tiny import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from .tasks import Task, corrupt, make_split, truncate  # noqa: E402

RESULTS_DIR = Path(__file__).parent / "results"


def build_tokenizer():
    """The tiny word-level tokenizer; every word the registered tasks use is already in its vocabulary."""
    return build_tiny_tokenizer()


def chat_prompt(tok, prompt_text: str) -> str:
    return templated_prompt(tok, [{"role": "user", "content": prompt_text}])


def encode_pair(tok, prompt_text: str, response: str) -> tuple[list[int], list[int]]:
    """Prompt ids and response ids + end-of-turn token, as GAD encodes them (`gad_trl.data`, the symmetry rule)."""
    p = prompt_ids(tok, [{"role": "user", "content": prompt_text}])
    r, _ = teacher_completion_ids(tok, response, end_of_turn_token_id(tok))
    return p, r


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------------
# Student pre-training on a perturbed ("weaker teacher") distribution of disjoint prompts
# --------------------------------------------------------------------------------------------------------------------
BASE_WIDTH = 128  # the width the pre-training LR (2e-3) and warm-up (50 steps) were set at


def pretrain_lr(hidden_size: int, rule: str = "width", base_lr: float = 2e-3, base_warmup: int = 50,
                steps: int | None = None) -> tuple[float, int]:
    """(peak LR, warm-up steps) of student pre-training. `fixed`: 2e-3 and 50 steps at every width (the former code;
    at width 512 AdamW at 2e-3 stalls at a loss plateau, see benchmarks/README.md). `width` (default): above
    `BASE_WIDTH` the LR falls as 1/width and the warm-up grows with width (capped at a quarter of `steps`), the usual
    muP-style rule for Adam on hidden matrices; at width <= 128 both are the former values, so results there do not
    change."""
    if rule == "fixed":
        return base_lr, base_warmup
    if rule != "width":
        raise ValueError(f"unknown pre-training LR rule {rule!r} (width, fixed)")
    scale = max(1.0, hidden_size / BASE_WIDTH)
    warmup = round(base_warmup * scale)
    if steps is not None:
        warmup = min(warmup, max(base_warmup, steps // 4))
    return base_lr / scale, warmup


def pretrain_student(
    tok,
    tasks: list[Task],
    seed: int,
    out_dir: str | Path,
    exclude_prompts: set[str],
    steps: int = 600,
    batch_size: int = 32,
    lr: float | None = None,
    corrupt_prob: float = 0.3,
    truncate_prob: float = 0.7,
    hidden_size: int = 128,
    num_layers: int = 2,
    n_per_task: int = 2000,
    log_every: int = 0,
    lr_rule: str = "width",
) -> dict:
    """Random-init tiny Qwen2 trained by cross-entropy on answers of a *weaker teacher*, on prompts disjoint from the
    train/eval prompts: the task programs' answers, each corrupted (swap/replace/drop/duplicate one word) with
    probability `corrupt_prob` (random noise), and cut short by their last word with probability `truncate_prob` (a
    systematic habit: with `truncate_prob > 0.5` stopping early is the student's *mode*, which greedy decoding
    follows). Both perturbations are task-agnostic, so a new task needs no extra code. The result knows the tasks'
    formats but answers worse than the teacher: the 'instruct student' that distillation starts from. Saves model +
    tokenizer to `out_dir`. LR: `lr` (50 warm-up steps) if given, else `pretrain_lr(hidden_size, lr_rule)`; then linear
    decay to 0."""
    seed_everything(seed)
    model = build_tiny_model(tok, seed=seed, hidden_size=hidden_size, num_layers=num_layers)
    rows = make_split(tasks, n_per_task, seed=f"pretrain-{seed}", exclude=exclude_prompts)
    rows = [r for r in rows if r["prompt_text"] not in exclude_prompts]
    rng = random.Random(seed)
    examples = []
    for r in rows:
        ans = corrupt(r["teacher_response"], rng) if rng.random() < corrupt_prob else r["teacher_response"]
        if rng.random() < truncate_prob:
            ans = truncate(ans)
        p, a = encode_pair(tok, r["prompt_text"], ans)
        examples.append((p, a))
    peak_lr, warmup = (lr, 50) if lr is not None else pretrain_lr(hidden_size, lr_rule, steps=steps)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))
    model.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        batch = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        loss = _lm_loss(model, tok, batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"  pretrain step {step} loss {statistics.mean(losses[-log_every:]):.3f}", flush=True)
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"final_loss": statistics.mean(losses[-50:]), "seconds": time.perf_counter() - t0, "examples": len(rows),
            "lr": peak_lr, "warmup_steps": warmup,
            "loss_curve": [round(statistics.mean(losses[i : i + 50]), 4) for i in range(0, steps, 50)]}


def _lm_loss(model, tok, batch):
    seqs = [p + a for p, a in batch]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), tok.pad_token_id)
    labels = torch.full((len(seqs), L), -100)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (p, a) in enumerate(batch):
        s = p + a
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        labels[i, len(p) : len(s)] = torch.tensor(a)
    ids, att, labels = (x.to(model.device) for x in (ids, att, labels))
    return model(input_ids=ids, attention_mask=att, labels=labels).loss


# --------------------------------------------------------------------------------------------------------------------
# Generation and judging
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tok, prompt_texts: list[str], max_new_tokens=40, batch_size=64, do_sample=False, temperature=0.8,
             seed=0) -> list[str]:
    tok.padding_side = "left"
    model.eval()
    out = []
    if do_sample:
        torch.manual_seed(seed)
    for i in range(0, len(prompt_texts), batch_size):
        chunk = [chat_prompt(tok, p) for p in prompt_texts[i : i + batch_size]]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs
        )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            row = row.tolist()
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            out.append(tok.decode(row, skip_special_tokens=True).strip())
    return out


def judge_rows(tasks_by_name: dict[str, Task], rows: list[dict], answers: list[str]) -> dict[str, float]:
    per_task: dict[str, list[float]] = {}
    for r, a in zip(rows, answers):
        per_task.setdefault(r["task"], []).append(tasks_by_name[r["task"]].judge(r["prompt_text"], a))
    scores = {k: statistics.mean(v) for k, v in per_task.items()}
    scores["mean"] = statistics.mean(scores[k] for k in per_task)
    return scores


def evaluate(model, tok, tasks_by_name, rows, **gen_kwargs) -> tuple[dict[str, float], list[str]]:
    answers = generate(model, tok, [r["prompt_text"] for r in rows], **gen_kwargs)
    scores = judge_rows(tasks_by_name, rows, answers)
    scores["len"] = statistics.mean(len(tok(a, add_special_tokens=False).input_ids) for a in answers)
    return scores, answers


# --------------------------------------------------------------------------------------------------------------------
# Discriminator scoring (last valid token, end-of-turn token included: gad_trl.discriminator.model)
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def disc_scores(disc, tok, prompt_texts: list[str], responses: list[str], batch_size: int = 64) -> torch.Tensor:
    """Discriminator scores of (prompt, response) pairs, computed as the trainer computes them (`score_sequences`,
    pooled as the discriminator's config says: `last`, or `mean` over the response tokens)."""
    disc.eval()
    pairs = [encode_pair(tok, p, r) for p, r in zip(prompt_texts, responses)]
    return score_sequences(disc, [p + r for p, r in pairs], tok.pad_token_id, next(disc.parameters()).device,
                           batch_size, [len(p) for p, _ in pairs]).cpu()


def machine() -> str:
    """The CPU, OS, torch version and torch threads a result was measured with (printed in the reports)."""
    import platform

    return (f"{platform.processor() or platform.machine()}, {platform.platform()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mean_std(xs: list[float]) -> tuple[float, float]:
    if any(x != x for x in xs):  # NaN (e.g. a Spearman of constant scores): statistics.stdev cannot take it
        return (float("nan"), float("nan"))
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
