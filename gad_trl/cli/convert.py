"""`gad-trl convert`: a GGUF checkpoint (llama.cpp file) into a Hugging Face folder every `gad-trl` command takes.

    gad-trl convert SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m-instruct
    gad-trl convert path/to/folder models/out --gguf_file model.Q4_K_M.gguf --dtype bfloat16

The weights are dequantised once, the tokenizer (with its chat template) repaired where GGUF metadata names the wrong
end-of-sequence token or no pad token (`gad_trl.workflow.gguf`). The folder then serves as student
(`model_name_or_path`), discriminator, teacher or judge (`gad-trl vllm-serve --model FOLDER`), and pushes to the Hub.
"""

from __future__ import annotations

import argparse


def make_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "gad-trl convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", help="A .gguf file, or a folder holding one (name it with --gguf_file if several).")
    parser.add_argument("output_dir", help="New folder to write (refused if it exists and is not empty).")
    parser.add_argument("--gguf_file", default=None, help="The file's name inside the folder given as `gguf`.")
    parser.add_argument("--dtype", default="float32",
                        help="Weights' dtype in the folder: float32 (default; exact for the dequantised values), "
                        "bfloat16 or float16 (half the size).")
    return parser


def run(argv: list[str]) -> int:
    import logging

    from ..workflow.gguf import GGUFError, convert_gguf

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    try:
        out = convert_gguf(args.gguf, args.output_dir, gguf_file=args.gguf_file, dtype=args.dtype)
    except GGUFError as err:
        print(f"gad-trl convert: {err}")
        return 2
    print(f"Hugging Face folder: {out}")
    return 0
