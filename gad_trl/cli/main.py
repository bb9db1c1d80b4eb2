"""`gad-trl`: the GAD command line, in the style of `trl <command>`.

    gad-trl make-tiny outputs/tiny                       # offline tiny model + toy data set
    gad-trl gad --config recipes/tiny/gad.yaml           # GAD (GADTrainer)
    gad-trl seqkd --config recipes/tiny/seqkd.yaml       # SeqKD baseline (TRL's SFTTrainer on the teacher responses)
    gad-trl soda --config recipes/tiny/soda.yaml         # SODA baseline (TRL's DPOTrainer: teacher vs student sample)
    gad-trl train --config recipes/tiny/gad.yaml         # any of them, following the recipe's `stage:` key
    gad-trl analyze-lengths --model_name_or_path M --dataset_name D
    gad-trl eval-discriminator --discriminator_name_or_path OUT/discriminator --dataset_name D
    gad-trl generate-teacher --dataset_name P --output data/train.jsonl --base_url URL --model TEACHER
    gad-trl evaluate --dataset_name D --student_model_name_or_path OUT --judge_base_url URL --output_dir OUT/eval
    gad-trl convert model.gguf models/out                # a GGUF checkpoint as a Hugging Face folder
    gad-trl vllm-serve --model M                         # vLLM server for `vllm_mode: server`

Each command parses its own arguments (`gad-trl <command> --help`); training commands accept `--config file.yaml`,
with command-line flags overriding the YAML.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module under gad_trl.cli, help). Modules are imported only when their command runs, so `--help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "gad": ("gad", "Train a student with GAD (GADTrainer)"),
    "seqkd": ("seqkd", "SeqKD baseline: SFT of the student on the teacher responses (TRL's SFTTrainer)"),
    "soda": ("soda", "SODA baseline: DPO of the student, teacher answer vs its own starting sample (TRL's DPOTrainer)"),
    "train": ("train", "Run a recipe with the trainer its `stage:` key names (gad, seqkd or soda)"),
    "analyze-lengths": ("analyze_lengths", "Teacher response token lengths and a suggested max_completion_length"),
    "eval-discriminator": ("eval_discriminator", "Discriminator accuracy / score gap on a fixed held-out set"),
    "estimate-memory": ("estimate_memory", "Per-GPU memory of student, reference and discriminator for each mode"),
    "generate-teacher": ("generate_teacher", "Teacher answers to a prompt set from an OpenAI-compatible endpoint"),
    "evaluate": ("evaluate", "Judge a student (paper's protocol), score checkpoints, pick the best one"),
    "convert": ("convert", "Convert a GGUF checkpoint (llama.cpp file) into a Hugging Face folder"),
    "make-tiny": ("make_tiny", "Write an offline tiny model and toy data set (for recipes/tiny)"),
    "vllm-serve": (None, "Serve the student with vLLM for `vllm_mode: server` (gad_trl.vllm)"),
    "env": (None, "Print the versions of gad_trl and its main dependencies"),
}


class _KernelsFallbackFilter(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'",
    logged when it is imported (transformers imports peft, peft bitsandbytes: every training command's start and
    `--help`) on CPUs with AVX512-BF16 and no `kernels` package: a harmless fallback to its own CPU kernel. The same
    warning with another cause (a `kernels` package that fails) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        missing = record.args and isinstance(record.args[0], ModuleNotFoundError) and record.args[0].name == "kernels"
        return not (missing and str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"))


def quiet_harmless_import_warnings() -> None:
    # On the logger itself, before bitsandbytes exists: getLogger returns this object to it when it is imported.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelsFallbackFilter())


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gad-trl",
        description="Generative Adversarial Distillation (arXiv 2511.10643) on TRL.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", help="available commands")
    for name, (_, help_text) in COMMANDS.items():
        # Each command parses its own arguments; add_help=False lets `gad-trl <command> --help` reach it.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def vllm_serve(argv: list[str]) -> int:
    try:
        from ..vllm import serve_main
    except ImportError as err:
        print(
            "gad-trl vllm-serve: the vLLM server is not available in this install "
            f"(gad_trl.vllm.serve_main could not be imported: {err}). Install the `vllm` extra "
            "(`pip install gad_trl[vllm]`, or scripts/install_env.sh on CPU), or use `trl vllm-serve` with "
            "vllm_weight_sync: nccl.",
            file=sys.stderr,
        )
        return 2
    result = serve_main(argv)
    return int(result or 0)


def print_env() -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    print(f"Python: {platform.python_version()} ({platform.platform()})")
    for pkg in ("gad_trl", "trl", "transformers", "torch", "accelerate", "datasets", "peft", "vllm", "trackio"):
        try:
            print(f"{pkg}: {version(pkg)}")
        except PackageNotFoundError:
            print(f"{pkg}: not installed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_harmless_import_warnings()
    parser = _build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args, _ = parser.parse_known_args(argv[:1])
    rest = argv[1:]
    if args.command == "vllm-serve":
        return vllm_serve(rest)
    if args.command == "env":
        return print_env()
    module = importlib.import_module(f".{COMMANDS[args.command][0]}", package=__package__)
    return int(module.run(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
