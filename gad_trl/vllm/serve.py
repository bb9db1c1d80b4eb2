"""`gad-trl vllm-serve`: start the vLLM server a GAD run in `vllm_mode="server"` talks to.

TRL 1.16's `trl vllm-serve` is a thin wrapper that execs vLLM's own OpenAI server (`vllm serve`) in dev mode with
TRL's flags. This module builds the same command and adapts it to the chosen weight-sync backend:

- `--weight-sync nccl` (GPU): exactly TRL's command, including `--weight-transfer-config '{"backend": "nccl"}'`; the
  trainer pushes the weights over NCCL (`VLLMClient.init_communicator`).
- `--weight-sync reload` (CPU or any machine without NCCL): no weight-transfer engine; the trainer saves the student
  as safetensors into a directory the server can read and calls the dev-mode RPC `POST /collective_rpc` with
  `{"method": "reload_weights", "kwargs": {"weights_path": <dir>}}`.

- `--weight-sync lora` (a LoRA student, any machine): the server loads the student's *base* once with LoRA enabled
  (`--enable-lora --max-lora-rank R`, runtime adapter loading allowed); each sync the trainer saves only the adapter
  into a directory the server can read and loads it as a new adapter (`POST /v1/load_lora_adapter`), which the next
  generation requests name as their model. The reload RPC stays available (the worker extension is on).

All run with `VLLM_SERVER_DEV_MODE=1` (it exposes `/collective_rpc`, `/reset_prefix_cache`, `/server_info` and the
weight-transfer endpoints).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

WEIGHT_SYNC_CHOICES = ("nccl", "reload", "lora")
# The LoRA ranks vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"  # lets a running server load adapters (/v1/load_lora_adapter)
WORKER_EXTENSION = "gad_trl.vllm.worker_extension.GADWorkerExtension"


def build_parser(prog: str = "gad-trl vllm-serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,  # unknown options are vLLM's: never let argparse expand them into ours
        description=(
            "Serve the student with vLLM for GAD training in vllm_mode='server'. Arguments not listed here are passed "
            "to `vllm serve` unchanged (e.g. --max-num-seqs 64 --seed 0)."
        ),
    )
    parser.add_argument("--model", required=True, help="Student checkpoint (local folder or Hub id).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8000, help="Port to listen on (default: 8000).")
    parser.add_argument(
        "--weight-sync",
        choices=WEIGHT_SYNC_CHOICES,
        default="nccl",
        help="How the trainer sends updated weights: 'nccl' (GPU, TRL's default), 'reload' (safetensors in a "
        "directory the server can read + the gad_reload_weights RPC of gad_trl's worker extension; works on CPU) or "
        "'lora' (a LoRA student: serve --model = the student's base with LoRA enabled; each sync loads only the "
        "adapter). Must match GADConfig.vllm_weight_sync.",
    )
    parser.add_argument(
        "--max-lora-rank", type=int, default=None, choices=VLLM_LORA_RANKS, metavar="R",
        help="--weight-sync lora: the largest LoRA rank the server accepts (>= the student's lora_r; one of "
        f"{', '.join(map(str, VLLM_LORA_RANKS))}; default 64). vLLM reserves LoRA buffers of this rank.",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--data-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default: info).")
    parser.add_argument(
        "--dry-run", action="store_true", help="Print the command and exit without starting the server."
    )
    return parser


def build_command(args: argparse.Namespace, extra_args: list[str] | None = None) -> list[str]:
    """The `python -m vllm.entrypoints.cli.main serve ...` command line for `args` (TRL's flags, adapted)."""
    from trl.scripts.vllm_serve import ScriptArguments
    from trl.scripts.vllm_serve import build_command as trl_build_command

    script_args = ScriptArguments(
        model=args.model,
        host=args.host,
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        enforce_eager=args.enforce_eager,
        trust_remote_code=args.trust_remote_code,
        log_level=args.log_level,
    )
    command = trl_build_command(script_args)
    max_lora_rank = getattr(args, "max_lora_rank", None)
    if max_lora_rank is not None and args.weight_sync != "lora":
        raise SystemExit("--max-lora-rank is for --weight-sync lora (the server then serves the student's adapter).")
    if args.weight_sync in ("reload", "lora"):
        # No NCCL weight-transfer engine: weights arrive from disk through the reload_weights RPC.
        i = command.index("--weight-transfer-config")
        del command[i : i + 2]
        # `gad_reload_weights` RPC: vLLM's reload_weights plus a fix for tied embeddings (see worker_extension.py).
        if "--worker-extension-cls" not in (extra_args or []):
            command += ["--worker-extension-cls", WORKER_EXTENSION]
    if args.weight_sync == "lora":
        # One adapter at a time: the trainer loads each new version, then unloads the one before.
        command += ["--enable-lora", "--max-lora-rank", str(max_lora_rank or 64), "--max-loras", "1"]
    return command + list(extra_args or [])


CPU_KVCACHE_GIB = "1"
# A float32 student served on CPU: vLLM's CPU backend picks bfloat16 under `--dtype auto` (its samples would drift from
# the trainer's log-probs), and eager mode skips torch.compile (half the start-up time).
CPU_FLOAT32_ARGS = ("--dtype", "float32", "--enforce-eager")


def server_env(base: dict | None = None, cuda: bool | None = None, weight_sync: str | None = None) -> dict:
    """The environment the server runs with: dev mode on (reload/reset endpoints); with `weight_sync="lora"`, runtime
    adapter loading on; without CUDA, a 1 GiB KV cache unless VLLM_CPU_KVCACHE_SPACE is set (vLLM's CPU backend would
    otherwise size it from the machine's memory)."""
    env = dict(os.environ if base is None else base)
    env["VLLM_SERVER_DEV_MODE"] = "1"
    if weight_sync == "lora":
        env[LORA_ENV] = "1"
    if not (_cuda_available() if cuda is None else cuda):
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    return env


def display_command(command: list[str], env: dict | None = None) -> str:
    """A copy-pasteable shell line for `command` (with the environment variables that matter)."""
    env = env or {}
    prefix = [f"{k}={shlex.quote(env[k])}" for k in ("VLLM_SERVER_DEV_MODE", LORA_ENV, "VLLM_CPU_KVCACHE_SPACE") if k in env]
    return " ".join(prefix + [shlex.join(command)])


def lora_rank_for(r: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds an adapter of rank `r`."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"vLLM serves LoRA adapters up to rank {VLLM_LORA_RANKS[-1]}; this adapter has rank {r}.")


def suggested_command(model: str, host: str, port: int, weight_sync: str, cpu_float32: bool = False,
                      lora_rank: int | None = None) -> str:
    """The `gad-trl vllm-serve` line that starts a server matching a trainer's settings (used in error messages).

    `cpu_float32`: the trainer runs on CPU with a float32 student; the server then gets CPU_FLOAT32_ARGS.
    `lora_rank`: with weight_sync "lora", the student adapter's rank (the server's --max-lora-rank holds it)."""
    command = ["gad-trl", "vllm-serve", "--model", str(model), "--host", str(host), "--port", str(port),
               "--weight-sync", weight_sync]  # fmt: skip
    if weight_sync == "lora" and lora_rank:
        command += ["--max-lora-rank", str(lora_rank_for(lora_rank))]
    if cpu_float32:
        command += CPU_FLOAT32_ARGS
    return shlex.join(command)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str) -> str | None:
    """The warning for a dev-mode server reachable from other machines (None on the loopback interface)."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    return (
        f"[gad-trl vllm-serve] WARNING: listening on {host} with VLLM_SERVER_DEV_MODE=1: anyone who can reach this "
        "port can call the unauthenticated dev endpoints (/collective_rpc, weight reload, /reset_prefix_cache) and "
        "replace or read the served weights. Bind to 127.0.0.1 when the trainer runs on this machine; otherwise "
        "keep the port on a private network (firewall / security group)."
    )


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - only a hint
        return True


def serve_main(argv: list[str] | None = None) -> int:
    """Entry point of `gad-trl vllm-serve`: parse, print the exact command, then exec it (never returns on success)."""
    parser = build_parser()
    args, extra_args = parser.parse_known_args(argv)
    command = build_command(args, extra_args)
    env = server_env(weight_sync=args.weight_sync)
    print(f"[gad-trl vllm-serve] weight sync: {args.weight_sync}", flush=True)
    if args.weight_sync == "nccl" and not _cuda_available():
        print(
            "[gad-trl vllm-serve] note: no CUDA device is visible and NCCL weight sync needs one; on CPU use "
            "--weight-sync reload (and vllm_weight_sync='reload' in the training config).",
            flush=True,
        )
    warning = exposure_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"[gad-trl vllm-serve] running: {display_command(command, env)}", flush=True)
    if args.dry_run:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)
    return 0  # unreachable

