"""`gad-trl evaluate`: the paper's judge protocol on a student, per checkpoint, and the best checkpoint by score
within a length bound (see gad_trl.workflow.evaluation and gad_trl.workflow.checkpoint_selection).

    # one student, served by vLLM (or --student_model_name_or_path for transformers), judged by GPT-4o
    gad-trl evaluate --dataset_name data/test.jsonl --student_base_url http://127.0.0.1:8001/v1 \
        --judge_base_url https://api.openai.com/v1 --judge_model gpt-4o --output_dir eval/final
    # every checkpoint of a run, then the best one whose mean answer stays under 600 tokens
    gad-trl evaluate --dataset_name data/test.jsonl --checkpoints_dir Qwen2.5-7B-GAD --judge_base_url ... \
        --judge_model gpt-4o
    gad-trl evaluate --pick_best Qwen2.5-7B-GAD --max_mean_length 600 --push_to_hub --hub_model_id me/Qwen2.5-7B-GAD

Exit status 1 when rows failed (listed in eval_judge_errors.jsonl; re-run to retry) or no checkpoint qualifies.
"""

from __future__ import annotations

import json
import logging

from trl import TrlParser

from ..workflow.checkpoint_selection import evaluate_checkpoints, format_pick_best, pick_best, push_checkpoint
from ..workflow.evaluation import EvaluationArguments, evaluate, format_summary


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((EvaluationArguments,), prog=prog or "gad-trl evaluate")


def run(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2"):  # one line per request otherwise (httpx2: the openai client's own copy)
        logging.getLogger(name).setLevel(logging.WARNING)
    (args,) = make_parser().parse_args_and_config(list(argv))
    if args.pick_best:
        best, table = pick_best(args.pick_best, args.max_mean_length)
        print(format_pick_best(best, table, args.max_mean_length))
        with open(f"{args.pick_best}/best_checkpoint.json", "w") as f:
            json.dump({"best": str(best) if best else None, "max_mean_length": args.max_mean_length,
                       "checkpoints": table}, f, indent=2)
        if best and args.push_to_hub:
            push_checkpoint(best, args.hub_model_id, private=args.hub_private_repo)
            print(f"Pushed {best} to https://huggingface.co/{args.hub_model_id}")
        return 0 if best else 1
    if args.checkpoints_dir:
        summaries = evaluate_checkpoints(args)
        for summary in summaries:
            print(format_summary(summary), end="\n\n")
        print(format_pick_best(*pick_best(args.checkpoints_dir, args.max_mean_length), args.max_mean_length))
        return 1 if any(s["failed"] for s in summaries) else 0
    summary = evaluate(args)
    print(format_summary(summary))
    return 1 if summary["failed"] else 0
