"""Run one command next to a local vLLM server: start it, run the command, stop it (used by scripts/demo.sh).

    python -m gad_trl.vllm.with_server --model outputs/tiny-sft --log outputs/vllm.log -- \\
        gad-trl train --config recipes/tiny/gad.yaml --use_vllm true --vllm_mode server \\
        --vllm_server_base_url {url} --vllm_weight_sync reload

`{url}` in the command becomes the server's address. The server is a `VLLMServer` (`gad-trl vllm-serve` on
127.0.0.1, a free port, CPU float32 defaults without CUDA), killed with its whole process group when the command
ends, fails or is interrupted. With `--url` (or `GAD_TRL_VLLM_URL`) an already running server is used instead and
left running. The exit code is the command's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

URL_PLACEHOLDER = "{url}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gad_trl.vllm.with_server",
        description="Start a local vLLM server (gad-trl vllm-serve), run a command with {url} set to it, stop it.",
    )
    parser.add_argument("--model", help="Checkpoint the server starts with (the student).")
    parser.add_argument("--log", default="vllm-server.log", help="Server log file (default: vllm-server.log).")
    parser.add_argument("--weight-sync", default="reload", choices=["reload", "nccl"],
                        help="Weight sync the server accepts; must match the command's vllm_weight_sync.")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="Seconds to wait for /health.")
    parser.add_argument("--url", default=os.environ.get("GAD_TRL_VLLM_URL"),
                        help="Use this running server instead of starting one (default: $GAD_TRL_VLLM_URL).")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("with_server: give the command to run after `--`.")
    server = None
    url = args.url
    if url is None:
        if not args.model:
            raise SystemExit("with_server: --model is required to start a server (or pass --url).")
        from .launcher import VLLMServer

        server = VLLMServer(args.model, args.log, weight_sync=args.weight_sync)
        print(f"[with_server] starting a vLLM server for {args.model} (log: {args.log}) ...", flush=True)
        start = time.monotonic()
        try:
            server.start(timeout=args.start_timeout)
        except Exception:
            server.kill()
            raise
        url = server.url
        print(f"[with_server] vLLM server ready at {url} after {time.monotonic() - start:.0f} s", flush=True)
    else:
        print(f"[with_server] using the running vLLM server at {url}", flush=True)
    command = [part.replace(URL_PLACEHOLDER, url) for part in command]
    try:
        return subprocess.call(command)
    finally:
        if server is not None:
            server.kill()
            print("[with_server] vLLM server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
