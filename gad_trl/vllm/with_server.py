"""Run one command next to a local vLLM server: start it, run the command, stop it (used by scripts/demo.sh).

    python -m gad_trl.vllm.with_server --model outputs/tiny-sft --log outputs/vllm.log -- \\
        gad-trl train --config recipes/tiny/gad.yaml --use_vllm true --vllm_mode server \\
        --vllm_server_base_url {url} --vllm_weight_sync reload

`{url}` in the command becomes the server's address. The server is a `VLLMServer` (`gad-trl vllm-serve` on
127.0.0.1, a free port, CPU float32 defaults without CUDA), killed with its whole process group when the command
ends, fails or is interrupted. `--server-arg` adds a `vllm serve` option after those defaults (repeatable; a later
option wins, so it can also change a default): `--server-arg=--max-model-len=2048`. With `--url` (or `GAD_TRL_VLLM_URL`) an already running server is used instead and
left running. The exit code is the command's.

The server runs in its own session (so that its whole group can be killed), which a signal sent to this wrapper's
group never reaches: SIGTERM (`timeout`, a batch scheduler), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) are
caught, passed on to the command (`COMMAND_GRACE` seconds to stop, then SIGKILL), the server is stopped, and the
exit code is 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from .serve import WEIGHT_SYNC_CHOICES

URL_PLACEHOLDER = "{url}"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
COMMAND_GRACE = 30.0  # seconds the command gets to stop after the signal is passed on


class _Stopped(BaseException):
    """A stop signal reached the wrapper (BaseException: no `except Exception` in between swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """The handler of STOP_SIGNALS: raises `_Stopped`, except while a process is being started (`deferred()`), where
    it would leave a started server or command untracked, never stopped; there it raises on leaving the block."""

    def __init__(self):
        self.received: int | None = None
        self._deferring = False

    def __call__(self, signum, frame):
        self.received = signum
        if not self._deferring:
            raise _Stopped(signum)

    @contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received is not None:
            raise _Stopped(self.received)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gad_trl.vllm.with_server",
        description="Start a local vLLM server (gad-trl vllm-serve), run a command with {url} set to it, stop it.",
    )
    parser.add_argument("--model", help="Checkpoint the server starts with (the student).")
    parser.add_argument("--log", default="vllm-server.log", help="Server log file (default: vllm-server.log).")
    parser.add_argument("--weight-sync", default="reload", choices=WEIGHT_SYNC_CHOICES,
                        help="Weight sync the server accepts; must match the command's vllm_weight_sync ('lora': "
                        "--model is the student's base).")
    parser.add_argument("--server-arg", action="append", default=[], metavar="OPTION",
                        help="A `vllm serve` option for the started server, after the defaults (repeatable; write it "
                        "with `=`: --server-arg=--max-model-len=2048).")
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
    if args.url is None and not args.model:
        raise SystemExit("with_server: --model is required to start a server (or pass --url).")
    if args.url is not None and args.server_arg:
        raise SystemExit(f"with_server: --server-arg {args.server_arg} would be lost: it configures a server this "
                         f"command starts, and --url (or GAD_TRL_VLLM_URL) names a running one ({args.url}). Pass the "
                         "options to that server, or drop --url.")
    import threading

    # (signal handlers can only be set from the main thread; main() called elsewhere keeps the default ones)
    handle = threading.current_thread() is threading.main_thread()
    stop = _StopSignals()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if handle else {}
    server = proc = None
    try:
        url = args.url
        if url is None:
            from .launcher import VLLMServer, default_server_args

            server = VLLMServer(args.model, args.log, weight_sync=args.weight_sync,
                                extra_args=(*default_server_args(), *args.server_arg))
            print(f"[with_server] starting a vLLM server for {args.model} (log: {args.log}) ...", flush=True)
            start = time.monotonic()
            with stop.deferred():
                server.launch()
            server.wait_healthy(timeout=args.start_timeout)
            url = server.url
            print(f"[with_server] vLLM server ready at {url} after {time.monotonic() - start:.0f} s", flush=True)
        else:
            print(f"[with_server] using the running vLLM server at {url}", flush=True)
        with stop.deferred():
            proc = subprocess.Popen([part.replace(URL_PLACEHOLDER, url) for part in command])
        return proc.wait()
    except _Stopped as stopped:
        print(f"[with_server] {signal.Signals(stopped.signum).name}: stopping the command and the server", flush=True)
        if proc is not None and proc.poll() is None:
            proc.send_signal(stopped.signum)  # the command may stop cleanly on it
            try:
                proc.wait(timeout=COMMAND_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 128 + stopped.signum
    finally:
        for sig in previous:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        if server is not None:
            server.kill()
            print("[with_server] vLLM server stopped", flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
