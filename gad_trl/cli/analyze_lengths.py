"""`gad-trl analyze-lengths`: token-length percentiles of the teacher responses and a suggested `max_completion_length`.

Teacher responses are tokenised as the discriminator reads them (no special tokens, plus the end-of-turn token),
prompts with the chat template and the generation prompt, as the student sees them. The suggestion covers the
`--percentile` of teacher lengths rounded up to a multiple of `--round_to`, so that few student completions that
imitate the teacher are clipped (clipped ratio > 30% is a known GAD failure mode: the discriminator then judges
length, not content).

    gad-trl analyze-lengths --model_name_or_path Qwen/Qwen2.5-7B-Instruct --dataset_name data/train.parquet
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from trl import TrlParser

PERCENTILES = (50, 90, 95, 99)


@dataclass
class AnalyzeLengthsArguments:
    model_name_or_path: str = field(metadata={"help": "Tokenizer (the student's) used to count tokens."})
    dataset_name: str = field(metadata={"help": "Hub id, local directory or .parquet/.json/.jsonl file."})
    dataset_config: str | None = field(default=None, metadata={"help": "Data set configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to analyse."})
    teacher_response_column: str = field(default="teacher_response", metadata={"help": "Teacher response column."})
    max_samples: int | None = field(default=None, metadata={"help": "Analyse only the first N rows."})
    percentile: float = field(default=99.0, metadata={"help": "Teacher-length percentile the suggestion covers."})
    round_to: int = field(default=64, metadata={"help": "Round the suggestion up to a multiple of this."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to AutoTokenizer.from_pretrained."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the report to this JSON file."})


def percentile(values: list[int], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def length_stats(values: list[int]) -> dict:
    stats = {"count": len(values), "mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    stats.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    return stats


def suggest_max_length(values: list[int], q: float = 99.0, round_to: int = 64) -> int:
    """Smallest multiple of `round_to` that is >= the q-th percentile of `values`."""
    round_to = max(1, int(round_to))
    return max(round_to, int(math.ceil(percentile(values, q) / round_to) * round_to))


def analyze(args: AnalyzeLengthsArguments, tokenizer=None, dataset=None) -> dict:
    from ..data import (
        prompt_messages,
        prompt_token_length,
        special_token_strings,
        special_tokens_in,
        teacher_completion_ids,
        teacher_texts,
    )
    from ..end_of_turn import end_of_turn_token_id
    from .utils import load_any_dataset

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    if dataset is None:
        dataset = load_any_dataset(args.dataset_name, args.dataset_config)[args.dataset_train_split]
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("The data set is empty.")

    # As the trainer encodes teacher responses (uncut: the point is to choose the cut).
    end = end_of_turn_token_id(tokenizer) if tokenizer.eos_token_id is not None else None
    teacher_lengths, prompt_lengths, special_rows = [], [], []
    specials = special_token_strings(tokenizer)
    for i, row in enumerate(dataset):
        texts = teacher_texts(row, args.teacher_response_column, i)  # every answer of a row with k of them
        for text in texts:
            ids, _ = teacher_completion_ids(tokenizer, text, end)
            teacher_lengths.append(len(ids))
        if any(special_tokens_in(text, specials) for text in texts):
            special_rows.append(i)
        prompt_lengths.append(prompt_token_length(tokenizer, prompt_messages(row, i)))

    suggestion = suggest_max_length(teacher_lengths, args.percentile, args.round_to)
    clipped = sum(n > suggestion for n in teacher_lengths) / len(teacher_lengths)
    return {
        "dataset": args.dataset_name,
        "model": args.model_name_or_path,
        "teacher_response_tokens": length_stats(teacher_lengths),
        "prompt_tokens": length_stats(prompt_lengths),
        "suggested_max_completion_length": suggestion,
        "suggested_covers_percentile": args.percentile,
        "teacher_fraction_above_suggestion": clipped,
        "suggested_vllm_max_model_length": suggest_max_length(
            [p + suggestion for p in prompt_lengths], 100.0, args.round_to
        ),
        # Encoded as plain text by the trainer (GADConfig.teacher_special_tokens="text"), refused with "error".
        "teacher_rows_with_special_token_strings": len(special_rows),
        "teacher_special_token_rows_first": special_rows[:10],
    }


def format_report(report: dict) -> str:
    def row(name, s):
        return (
            f"{name:<18} n={s['count']:<6} mean={s['mean']:<8.1f} p50={s['p50']:<7.0f} p90={s['p90']:<7.0f} "
            f"p95={s['p95']:<7.0f} p99={s['p99']:<7.0f} max={s['max']}"
        )

    return "\n".join(
        [
            f"Token lengths in {report['dataset']} (tokenizer: {report['model']})",
            row("teacher response", report["teacher_response_tokens"]),
            row("prompt", report["prompt_tokens"]),
            f"Suggested max_completion_length: {report['suggested_max_completion_length']} "
            f"(covers p{report['suggested_covers_percentile']:g} of teacher lengths; "
            f"{100 * report['teacher_fraction_above_suggestion']:.1f}% of teacher responses are longer)",
            f"Suggested vllm_max_model_length (longest prompt + completion): "
            f"{report['suggested_vllm_max_model_length']}",
        ]
        + special_token_line(report)
    )


def special_token_line(report: dict) -> list[str]:
    n = report.get("teacher_rows_with_special_token_strings", 0)
    if not n:
        return []
    return [
        f"{n} teacher response(s) contain special-token strings (rows {report['teacher_special_token_rows_first']}"
        f"{', ...' if n > 10 else ''}): GAD encodes them as plain text (teacher_special_tokens='text'); "
        "teacher_special_tokens='error' refuses them."
    ]


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((AnalyzeLengthsArguments,), prog=prog or "gad-trl analyze-lengths")


def run(argv: list[str]) -> int:
    (args,) = make_parser().parse_args_and_config(list(argv))
    report = analyze(args)
    print(format_report(report))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
