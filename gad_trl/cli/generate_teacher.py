"""`gad-trl generate-teacher`: the teacher's answer to every prompt, from an OpenAI-compatible endpoint, in the
trainer's format (resumable; see gad_trl.workflow.teacher).

    export OPENAI_API_KEY=...        # read from the environment, never logged or saved
    gad-trl generate-teacher --dataset_name prompts.jsonl --output data/train.jsonl \
        --base_url https://api.openai.com/v1 --model gpt-4o --max_tokens 1536 --concurrency 16 \
        --tokenizer_name_or_path Qwen/Qwen2.5-7B-Instruct

    # k answers per prompt (one request with the API's `n`, one per answer where the endpoint lacks it):
    gad-trl generate-teacher ... --num_answers 4 --temperature 1.0 --seed 0
    # teacher trajectories through the tool-calling API, the tools run here:
    gad-trl generate-teacher ... --tools my_tools:search,my_tools:calculator --max_tool_calls 8 --tool_timeout 20

Exit status 1 when rows failed (listed in `<output>.errors.jsonl`): run the same command again to retry them.
"""

from __future__ import annotations

import json
import logging

from trl import TrlParser

from ..workflow.teacher import TeacherGenerationArguments, format_summary, generate_teacher


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser((TeacherGenerationArguments,), prog=prog or "gad-trl generate-teacher")


def length_summary(args: TeacherGenerationArguments) -> str:
    """The `analyze-lengths` report of the finished data set (the student's tokenizer)."""
    from .analyze_lengths import AnalyzeLengthsArguments, analyze, format_report

    report = analyze(AnalyzeLengthsArguments(
        model_name_or_path=args.tokenizer_name_or_path, dataset_name=args.output,
        teacher_response_column=args.teacher_response_column,
    ))  # fmt: skip
    return format_report(report)


def run(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2"):  # one line per request otherwise (httpx2: the openai client's own copy)
        logging.getLogger(name).setLevel(logging.WARNING)
    (args,) = make_parser().parse_args_and_config(list(argv))
    summary = generate_teacher(args)
    print(format_summary(summary))
    if summary["output"] and args.tokenizer_name_or_path:
        print(length_summary(args))
    with open(args.summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    return 1 if summary["failed"] else 0
