"""The FSDP2-sharded discriminator (discriminator_sharding='fsdp2'/'auto'): same training as the replicated one, exact
resume from its checkpoints, a plain reloadable `discriminator/` folder, and clear errors where it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from gad_trl.vllm.launcher import free_port
from tests.helpers.gad_helpers import crafted, make_trainer

SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "sharded_train.py"


@pytest.mark.slow
def test_sharded_discriminator_trains_resumes_and_saves_like_the_replicated_one(tiny_model_dir, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(SCRIPT), tiny_model_dir, str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["sharded_flags"] == [False, True]
        assert r["same_start"] == 0.0 and r["changed"] > 1e-3  # it trained, from the same start
        assert r["sharded_vs_replicated"] < 1e-5
        assert r["resumed_vs_uninterrupted"] < 1e-5
        assert r["replicated_resumed_vs_uninterrupted"] < 1e-5  # the replicated (DDP-style) path resumes too
        assert r["optimizer_steps"] == [3] and r["global_step"] == 3
        assert r["param_dtypes"] == r["bf16_loaded_param_dtypes"] == ["torch.float32"]  # float32 master weights
        assert r["local_numel"] < 0.6 * r["full_numel"]  # each rank holds about half
    ckpt = tmp_path / "sharded" / "checkpoint-2"
    state = torch.load(ckpt / "discriminator_optimizer.pt", weights_only=False)
    assert isinstance(state["param_groups"][0]["params"][0], str)  # full state keyed by parameter name

    # The saved folder is a plain model: reloads and holds the trained weights (not the initial ones).
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "sharded" / "discriminator", num_labels=1)
    initial = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(saved.state_dict()[key], initial.state_dict()[key])


def test_fsdp2_sharding_in_a_single_plain_process_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="needs torch.distributed"):
        make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_sharding="fsdp2")


def test_auto_sharding_keeps_a_single_process_replicated(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1)
    assert trainer.args.discriminator_sharding == "auto" and trainer.discriminator_component.sharded is False


def test_unknown_sharding_mode_is_rejected(tmp_path):
    from gad_trl import GADConfig

    with pytest.raises(ValueError, match="discriminator_sharding must be"):
        GADConfig(output_dir=str(tmp_path), use_cpu=True, discriminator_sharding="zero3")


def test_resuming_a_sharded_checkpoint_replicated_is_a_clear_error(tiny_model_dir, tmp_path):
    """A sharded run's optimizer file is keyed by parameter name; a replicated optimizer cannot take it."""
    trainer = make_trainer(tiny_model_dir, tmp_path / "a", max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    path = tmp_path / "a" / "checkpoint-1" / "discriminator_optimizer.pt"
    state = torch.load(path, weights_only=False)
    names = [n for n, p in trainer.discriminator.named_parameters() if p.requires_grad]
    state["state"] = {names[i]: v for i, v in state["state"].items()}
    state["param_groups"][0]["params"] = [names[i] for i in state["param_groups"][0]["params"]]
    torch.save(state, path)  # what discriminator_sharding.save_optimizer writes
    again = make_trainer(tiny_model_dir, tmp_path / "b", max_steps=2)
    with pytest.raises(ValueError, match="sharded discriminator's optimizer state"):
        again.train(resume_from_checkpoint=str(path.parent))


def test_sharded_optimizer_state_is_loaded_as_data_only(tmp_path):
    """`discriminator_sharding.load_optimizer` used `weights_only=False`: a crafted file ran code on resume."""
    from gad_trl.discriminator.sharding import load_optimizer

    model = torch.nn.Linear(2, 1)
    path, marker = tmp_path / "discriminator_optimizer.pt", tmp_path / "pwned"
    crafted(path, marker)
    with pytest.raises(ValueError, match="discriminator_optimizer.pt"):
        load_optimizer(model, torch.optim.AdamW(model.parameters()), str(path))
    assert not marker.exists()

