"""Summary table of GAD variants from `benchmarks.quality` result files (the lever search of benchmarks/README.md).

    .venv/bin/python -m benchmarks.levers benchmarks/results/quality_frozen.json benchmarks/results/quality_lever_*.json \
        --out benchmarks/results/levers.md

Each JSON is one `benchmarks.quality` run; every GAD-like method in it (gad, gad_frozen, gad_after_long) becomes a row,
SeqKD rows are listed once for reference. Numbers are read, never computed anew: mean ± std over the run's seeds of
the greedy judge score, the sampled one, the discriminator-judge Spearman correlation (starting student's and final
student's held-out samples) and the CPU seconds of `trainer.train()` per seed, also as a ratio to SeqKD-long's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import mean_std
from .quality import GAD_METHODS, METHOD_LABELS

SFT_METHODS = ("seqkd", "seqkd_long", "seqkd_long_k4", "sft_after_long")


def _stat(results, method, key, fmt="{:.3f}"):
    vals = [res[method][key] for res in results["seeds"].values() if res.get(method, {}).get(key) is not None]
    if not vals:
        return "", None
    mu, sd = mean_std(vals)
    return f"{fmt.format(mu)} ± {fmt.format(sd)}", mu


def _variant(args: dict) -> str:
    """What the run changed from the suite's defaults, read from its saved arguments."""
    defaults = {"disc_pooling": "last", "disc_lr": 3e-4, "disc_loss": "bradley_terry", "beta": 0.0, "gad_epochs": 2.0,
                "disc_hidden_size": None, "critic_warmup_steps": 20, "sft_warmup_epochs": 1.0, "gad_lr": 3e-5,
                "hidden_size": 128, "disc_replay": 0, "disc_iterations": 1, "disc_replay_ratio": 0.5, "sft_loss_coef": 1.0,
                "disc_reward_weight": 1.0, "disc_replay_mode": "add"}
    changed = [f"{k}={args[k]}" for k, v in defaults.items() if k in args and args[k] != v
               and not (k in ("disc_replay_ratio", "disc_replay_mode") and not args.get("disc_replay"))]
    return ", ".join(changed) or "defaults"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="benchmarks.quality JSON files")
    p.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    a = p.parse_args(argv)
    rows, sft_rows, long_cpu = [], {}, {}
    runs = [(path, json.loads(Path(path).read_text())) for path in a.results]
    # SFT rows (and the CPU reference) from runs without trajectory evaluations, which would inflate their CPU time.
    runs_sft_first = sorted(runs, key=lambda r: bool(r[1]["args"].get("trajectory_every")))
    for path, results in runs_sft_first:
        seeds = sorted(results["seeds"])
        for m in SFT_METHODS:
            # One SFT row per student size and schedule (other variants share them).
            key = (m, results["args"].get("hidden_size"), results["args"].get("gad_epochs"))
            if all(m in results["seeds"][s] for s in seeds) and key not in sft_rows:
                judge, _ = _stat(results, m, "mean")
                cpu, cpu_mu = _stat(results, m, "train_cpu_s", "{:.0f}")
                seed0 = results["seeds"].get("0", {}).get(m, {}).get("mean")
                seed0 = "" if seed0 is None else f"{seed0:.3f}"
                variant = ", ".join(f"{k}={v}" for k, v in (("hidden_size", key[1]), ("gad_epochs", key[2]))
                                    if v not in (128, 2.0))
                length = _stat(results, m, "len", "{:.1f}")[0]
                sft_rows[key] = (f"| {METHOD_LABELS[m]}{f' ({variant})' if variant else ''} | {Path(path).stem} | {len(seeds)} | {judge} | {seed0} | "
                               f"{_stat(results, m, 'sampled')[0]} | {length} | | | | {cpu} | |")
                if m == "seqkd_long":
                    long_cpu[key[1:]] = cpu_mu
    for path, results in runs:
        seeds = sorted(results["seeds"])
        # SODA: one row per run (its DPO settings are the variant), the SODA setting search of benchmarks/README.md.
        if all("soda" in results["seeds"][s] for s in seeds):
            ra = results["args"]
            variant = f"lr={ra.get('soda_lr')}, beta={ra.get('soda_beta')}, epochs={ra.get('soda_epochs')}"
            cpu, cpu_mu = _stat(results, "soda", "train_cpu_s", "{:.0f}")
            rows.append((METHOD_LABELS["soda"], Path(path).stem, variant, len(seeds), _stat(results, "soda", "mean")[0],
                         "", _stat(results, "soda", "sampled")[0], _stat(results, "soda", "len", "{:.1f}")[0],
                         "", "", "", "", cpu, cpu_mu, None))
        for m in GAD_METHODS:
            if not all(m in results["seeds"][s] for s in seeds):
                continue
            cpu, cpu_mu = _stat(results, m, "train_cpu_s", "{:.0f}")
            seed0 = results["seeds"].get("0", {}).get(m, {}).get("mean")
            reference_cpu = long_cpu.get((results["args"].get("hidden_size"), results["args"].get("gad_epochs")))
            rows.append((METHOD_LABELS[m], Path(path).stem, _variant(results["args"]), len(seeds),
                         _stat(results, m, "mean")[0], "" if seed0 is None else f"{seed0:.3f}",
                         _stat(results, m, "sampled")[0], _stat(results, m, "len", "{:.1f}")[0],
                         _stat(results, m, "d_judge_spearman")[0], _stat(results, m, "d_judge_spearman_final")[0],
                         _stat(results, m, "d_judge_spearman_within_start")[0],
                         _stat(results, m, "d_judge_spearman_within_final")[0], cpu, cpu_mu, reference_cpu))
    lines = ["| method | run | seeds | judge (greedy) | judge, seed 0 | judge (sampled) | mean length | Spearman D-judge, start samples | "
             "Spearman, final samples | within-prompt Spearman, start / final student | train CPU s / seed | x SeqKD-long CPU (same size) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += list(sft_rows.values())
    for label, run, variant, n, judge, seed0, sampled, length, sp0, sp1, w0, w1, cpu, cpu_mu, ref_cpu in rows:
        ratio = f"{cpu_mu / ref_cpu:.1f}x" if cpu_mu and ref_cpu else ""
        within = f"{w0} / {w1}" if w0 or w1 else ""
        lines.append(f"| {label} ({variant}) | {run} | {n} | {judge} | {seed0} | {sampled} | {length} | {sp0} | {sp1} | "
                     f"{within} | {cpu} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
