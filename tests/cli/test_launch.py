"""The DeepSpeed launchers for real, on CPU: `accelerate launch` with 2 processes (gloo, DS_ACCELERATOR=cpu) runs
`gad-trl gad`'s main for 3 steps, checkpoints, saves, and a run resumed into the next epoch ends where the
uninterrupted one did.
ZeRO-3 shards the discriminator next to the student (discriminator_sharding: auto); ZeRO-2 keeps it replicated.
(The DDP-style multi-process path: tests/test_cpu_distributed.py and tests/discriminator/test_sharding.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "launcher_train.py"


def write_tiny_data(root: Path) -> str:
    """16 train rows (2 steps an epoch at the script's batch) and 4 test rows under `root/data`."""
    from gad_trl.tiny import tiny_gad_rows, write_jsonl

    write_jsonl(tiny_gad_rows(16, seed=0), root / "data" / "train.jsonl")
    write_jsonl(tiny_gad_rows(4, seed=1), root / "data" / "test.jsonl")
    return str(root / "data")


def launch(launcher: str, model_dir, data_dir, out, *script_args, timeout: int = 800):
    """`accelerate launch` of tests/helpers/launcher_train.py with 2 CPU processes (DeepSpeed on CPU) and the
    accelerate config `launcher` (zero2 / zero3); fails the test with the output's tail when it does not exit 0."""
    from gad_trl.vllm.launcher import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "gad_trl" / "accelerate_configs" / f"{launcher}.yaml"), "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(free_port()),
               str(SCRIPT), str(model_dir), str(data_dir), str(out), *script_args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run_dirs(tmp_path_factory):
    from gad_trl.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("launch")
    return save_tiny_model(root / "model", seed=0), write_tiny_data(root)


@pytest.mark.slow
@pytest.mark.parametrize("launcher, sharded", [("zero3", True), ("zero2", False)])
def test_deepspeed_launch_trains_saves_and_resumes(tiny_run_dirs, tmp_path, launcher, sharded):
    pytest.importorskip("deepspeed", reason="the `deepspeed` extra is not installed")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model_dir, data_dir = tiny_run_dirs
    launch(launcher, model_dir, data_dir, tmp_path, timeout=600)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["distributed_type"] == "DistributedType.DEEPSPEED" and result["num_processes"] == 2
        assert result["sharded"] == [sharded, sharded]
        assert result["global_steps"] == [3, 3]

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for weights in ["model.safetensors", "discriminator/model.safetensors"]:
        a, b = load_file(full / weights), load_file(resumed / weights)
        assert sorted(a) == sorted(b)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6, weights  # resume = uninterrupted run
        start = load_file(full / "checkpoint-2" / weights)
        assert any(not torch.equal(start[k], a[k]) for k in a), weights  # step 3 trained both models
    disc = AutoModelForSequenceClassification.from_pretrained(full / "discriminator", num_labels=1)
    assert disc.config.num_labels == 1 and disc.model.embed_tokens.weight.dim() == 2  # whole, not ZeRO-partitioned
