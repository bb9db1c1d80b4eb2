"""`gad-trl make-tiny OUTPUT_DIR`: an offline tiny student and a toy distillation data set for the tiny recipes.

Writes `OUTPUT_DIR/model` (a random-init Qwen2 with a word-level chat tokenizer, `gad_trl.tiny`) and
`OUTPUT_DIR/data/{train,test}.jsonl` (the toy teacher upper-cases the words of the prompt). Nothing is downloaded.
With `--tools`, the toy agentic set instead: a tiny student given a short SFT so that it calls the `add` tool
(`gad_trl.tiny.add`, in the Qwen2.5 tool-call layout) and rows whose teacher answers are tool-using trajectories
(`recipes/tiny/gad_tools.yaml`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_tiny(output_dir: str, num_train: int = 64, num_test: int = 16, seed: int = 0, fmt: str = "conversational",
              tools: bool = False):
    from ..tiny import save_tiny_model, save_tiny_tool_caller, tiny_gad_rows, tiny_tool_rows, write_jsonl

    out = Path(output_dir)
    if tools:
        if fmt != "conversational":
            raise ValueError("--tools writes conversational rows (tool calls live in messages); drop --format.")
        rows = tiny_tool_rows(num_train + num_test, seed=seed)
        model_dir = save_tiny_tool_caller(out / "model", rows[:min(num_train, 16)], seed=seed, steps=200)
    else:
        model_dir = save_tiny_model(out / "model", seed=seed)
        rows = tiny_gad_rows(num_train + num_test, seed=seed, fmt=fmt)
    train = write_jsonl(rows[:num_train], out / "data" / "train.jsonl")
    test = write_jsonl(rows[num_train:], out / "data" / "test.jsonl")
    return {"model": model_dir, "train": train, "test": test}


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "gad-trl make-tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", default="outputs/tiny", help="Folder to write (default outputs/tiny).")
    parser.add_argument("--num_train", type=int, default=64, help="Training rows (default 64).")
    parser.add_argument("--num_test", type=int, default=16, help="Held-out rows (default 16).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model init and the rows.")
    parser.add_argument(
        "--format", dest="fmt", default="conversational", choices=["conversational", "verl", "standard"],
        help="Row format: TRL `prompt` messages, verl `content` messages, or a plain-text prompt.",
    )
    parser.add_argument(
        "--tools", action="store_true",
        help="The toy agentic set: a tiny student that calls the `add` tool (short SFT, ~10 s) and rows whose teacher "
        "answers are tool-using trajectories (recipes/tiny/gad_tools.yaml).",
    )
    return parser


def run(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    paths = make_tiny(args.output_dir, args.num_train, args.num_test, args.seed, args.fmt, args.tools)
    print(f"Tiny model: {paths['model']}\nData: {paths['train']}, {paths['test']}")
    return 0
