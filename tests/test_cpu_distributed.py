"""Two training processes (CPU, gloo, as `accelerate launch`/torchrun start them): the replicated discriminator's
gradients are averaged across processes, so every rank holds the same discriminator, and every rank logs the same
discriminator metrics (the mean over processes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gad_trl.vllm.launcher import free_port

SCRIPT = Path(__file__).resolve().parents[0] / "helpers" / "multiprocess_train.py"


def run_two_processes(model_dir, out, *extra):
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(SCRIPT), model_dir, str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_processes_keep_one_discriminator(tiny_model_dir, tmp_path):
    ranks = run_two_processes(tiny_model_dir, tmp_path / "ddp")
    assert all(r["world_size"] == 2 and r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks)
    assert all(r["changed"] for r in ranks)
    assert ranks[0]["checksums"] == ranks[1]["checksums"]  # averaged gradients: identical updates on both ranks
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] and ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["teacher_prompts"] == [2.0, 2.0]  # one prompt per rank per step, counted over both

    # The ranks saw different prompts: without the all-reduce their discriminators part (what the check above catches).
    apart = run_two_processes(tiny_model_dir, tmp_path / "no-all-reduce", "--no-all-reduce")
    assert apart[0]["checksums"] != apart[1]["checksums"]
