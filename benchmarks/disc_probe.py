"""Can a discriminator of the suite's size learn to rank one prompt's student answers the way the judge does?

    .venv/bin/python -m benchmarks.disc_probe --workdir /tmp/q0 --seeds 0

An offline probe of GAD's reward (issue 10). GRPO only compares the answers of one prompt with each other, so the
reward is useful exactly when it ranks those answers like the judge: the within-prompt Spearman correlation of D's
scores and the judge's. In the suite it stays near 0.05-0.1 after GAD. This probe separates the two possible causes,
with the student's samples held fixed:

- `bt`: GAD's objective, Bradley-Terry on (teacher answer, student answer) pairs of one prompt, trained for many
  more updates than a GAD run gives the discriminator;
- `oracle`: the same discriminator and optimiser trained by Bradley-Terry on pairs of the student's own answers to one
  prompt ordered by the judge, i.e. given the ranking signal GAD would need. It bounds what this capacity can learn.

Both start from the pre-trained student's weights with a new value head, as GAD's discriminator does (the library's
`load_discriminator`, `score_sequences`, `discriminator_loss`). The student whose answers are ranked is the SeqKD-long
student of a `benchmarks.quality` work dir (`base_<seed>/`, `seqkdl_<seed>/final/`), sampling k answers per prompt at
T=0.8 on the suite's train prompts (training data) and on its held-out discriminator prompts (test). After every
epoch: within-prompt Spearman on the held-out answers and held-out teacher-vs-student accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from .common import RESULTS_DIR, build_tokenizer, encode_pair, generate, machine, mean_std, seed_everything
from .quality import within_prompt_spearman
from .tasks import get_tasks, make_split


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a benchmarks.quality work dir with base_<seed>/ and seqkdl_<seed>/final/"
                   " (one per seed: a {seed} placeholder is filled in)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--k", type=int, default=8, help="answers sampled per prompt (GAD's G)")
    p.add_argument("--lr", type=float, default=3e-4, help="discriminator LR (the suite's)")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-disc", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS_DIR / "disc_probe.md"))
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    return a


def _encode(tok, rows, answers, k):
    """Per prompt: the teacher sequence and its k student sequences (ids, response start), and the judge's scores."""
    out = []
    for i, r in enumerate(rows):
        p, t = encode_pair(tok, r["prompt_text"], r["teacher_response"])
        students = [encode_pair(tok, r["prompt_text"], a) for a in answers[i * k : (i + 1) * k]]
        out.append({"teacher": (p + t, len(p)), "students": [(sp + sa, len(sp)) for sp, sa in students],
                    "judge": [r["judge"](r["prompt_text"], a) for a in answers[i * k : (i + 1) * k]]})
    return out


def _scores(disc, tok, seqs, grad=False):
    import torch

    from gad_trl.discriminator.model import score_sequences

    context = torch.enable_grad() if grad else torch.no_grad()
    with context:
        return score_sequences(disc, [s for s, _ in seqs], tok.pad_token_id, "cpu", 256, [st for _, st in seqs])


def evaluate_disc(disc, tok, test) -> dict:
    disc.eval()
    groups, correct, total = [], 0, 0
    for item in test:
        scores = _scores(disc, tok, [item["teacher"]] + item["students"]).tolist()
        groups.append((scores[1:], item["judge"]))
        correct += sum(scores[0] > s for s in scores[1:])
        total += len(scores) - 1
    disc.train()
    within = within_prompt_spearman(groups)
    return {"within_spearman": within["mean"], "ranked": within["ranked"], "teacher_vs_student_acc": correct / total}


def train_probe(objective, student_dir, tok, train, test, args, seed) -> list[dict]:
    import torch

    from gad_trl.discriminator.model import load_discriminator
    from gad_trl.discriminator.losses import discriminator_loss

    seed_everything(seed)
    disc = load_discriminator(student_dir, None, {}, tok.pad_token_id)
    disc.train()
    opt = torch.optim.AdamW(disc.parameters(), lr=args.lr)
    rng = random.Random(seed)
    curve = [{"epoch": 0, **evaluate_disc(disc, tok, test)}]
    for epoch in range(1, args.epochs + 1):
        order = list(range(len(train)))
        rng.shuffle(order)
        for start in range(0, len(order), args.prompts_per_step):
            batch = [train[i] for i in order[start : start + args.prompts_per_step]]
            if objective == "bt":
                seqs = [b["teacher"] for b in batch] + [s for b in batch for s in b["students"]]
                scores = _scores(disc, tok, seqs, grad=True)
                n = len(batch)
                index = torch.tensor([i for i, b in enumerate(batch) for _ in b["students"]])
                loss, _ = discriminator_loss(scores[:n][index], scores[n:], "bradley_terry")
            else:  # oracle: the judge's order among one prompt's own answers
                seqs = [s for b in batch for s in b["students"]]
                better, worse, offset = [], [], 0
                for b in batch:
                    kk = len(b["students"])
                    for i in range(kk):
                        for j in range(kk):
                            if b["judge"][i] > b["judge"][j]:
                                better.append(offset + i)
                                worse.append(offset + j)
                    offset += kk
                if not better:
                    continue
                scores = _scores(disc, tok, seqs, grad=True)
                loss, _ = discriminator_loss(scores[better], scores[worse], "bradley_terry")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
            opt.step()
        curve.append({"epoch": epoch, **evaluate_disc(disc, tok, test)})
        print(f"  {objective} epoch {epoch} {curve[-1]}", flush=True)
    return curve


def main(argv=None):
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    tok = build_tokenizer()
    tasks = get_tasks(None)
    judges = {t.name: t.judge for t in tasks}
    train_rows = make_split(tasks, args.n_train, seed="train")
    test_rows = make_split(tasks, args.n_disc, seed="disc-heldout", exclude={r["prompt_text"] for r in train_rows})
    for r in train_rows + test_rows:
        r["judge"] = judges[r["task"]]
    results = {"args": {k: v for k, v in vars(args).items()}, "seeds": {}}
    t0 = time.perf_counter()
    for seed in args.seeds:
        work = Path(args.workdir.format(seed=seed))
        base_dir, student_dir = work / f"base_{seed}", work / f"seqkdl_{seed}" / "final"
        student = AutoModelForCausalLM.from_pretrained(student_dir)
        sampled = {}
        for name, rows, sample_seed in (("train", train_rows, 11), ("test", test_rows, 2468)):
            prompts = [r["prompt_text"] for r in rows for _ in range(args.k)]
            answers = generate(student, tok, prompts, do_sample=True, temperature=args.temperature, seed=sample_seed,
                               max_new_tokens=args.max_completion_length)
            sampled[name] = _encode(tok, rows, answers, args.k)
        judge_spread = statistics.mean(float(len(set(i["judge"])) > 1) for i in sampled["test"])
        print(f"=== seed {seed}: {judge_spread:.2f} of held-out prompts have answers the judge ranks", flush=True)
        results["seeds"][seed] = {
            objective: train_probe(objective, str(base_dir), tok, sampled["train"], sampled["test"], args, seed)
            for objective in ("bt", "oracle")
        }
        results["seeds"][seed]["judge_spread"] = judge_spread
    results["wall_s"] = time.perf_counter() - t0
    results["machine"] = machine()
    write_report(args, results)
    return results


def write_report(args, results):
    seeds = list(results["seeds"])
    lines = ["# Discriminator probe: within-prompt ranking (issue 10)", "",
             f"Command: `python -m benchmarks.disc_probe --workdir {args.workdir} --seeds "
             f"{','.join(map(str, args.seeds))} --epochs {args.epochs}` ({results['wall_s']:.0f} s; machine: "
             f"{results['machine']}). Held-out: "
             f"{args.n_disc} prompts a task, {args.k} answers each from the SeqKD-long student (T={args.temperature}).",
             "", "| epoch | BT (GAD): within-prompt Spearman | BT: teacher-vs-student acc | oracle (judge-ordered pairs): "
             "within-prompt Spearman | oracle: teacher-vs-student acc |", "|---|---|---|---|---|"]
    for e in range(args.epochs + 1):
        cells = []
        for objective in ("bt", "oracle"):
            for key in ("within_spearman", "teacher_vs_student_acc"):
                mu, sd = mean_std([results["seeds"][s][objective][e][key] for s in seeds])
                cells.append(f"{mu:.3f} ± {sd:.3f}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines.append("")
    spread = statistics.mean(results["seeds"][s]["judge_spread"] for s in seeds)
    lines.append(f"{spread:.2f} of the held-out prompts have answers the judge does not score all alike (the "
                 f"Spearman is taken over those); mean ± std over seeds {seeds}.")
    out = Path(args.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
