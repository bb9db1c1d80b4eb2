"""`gad_trl.discriminator.model`: scores in float32 under bf16 autocast, a clear error for an out-of-range
`pad_token_id`, and the discriminator loaded whole on every process even when the launcher set up DeepSpeed ZeRO-3
(zero.Init at creation) or FSDP's CPU-RAM-efficient loading (zeros on every rank but 0); GAD shards it itself, if at
all (discriminator_sharding). A real 2-process ZeRO-3 launch: tests/cli/test_launch.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gad_trl.discriminator.model import load_discriminator, replicated_loading

FSDP_RANK1_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from gad_trl.discriminator.model import load_discriminator

    model_dir = sys.argv[1]
    student = AutoModelForCausalLM.from_pretrained(model_dir)  # reference weights, loaded before FSDP is set up
    key = "model.layers.0.self_attn.q_proj.weight"
    # What `accelerate launch` with fsdp_cpu_ram_efficient_loading sets, on a process that is not local rank 0.
    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_CPU_RAM_EFFICIENT_LOADING="true", LOCAL_RANK="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
    dist.init_process_group("gloo", rank=0, world_size=1)
    plain = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    disc = load_discriminator(model_dir, None, {}, 0)
    print(json.dumps({
        "plain_is_zero": bool(plain.state_dict()[key].abs().sum() == 0),
        "disc_equals_student": bool(torch.equal(disc.state_dict()[key], student.state_dict()[key])),
        "env_after": os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING"),
    }))
    dist.destroy_process_group()
    """
)


def test_fsdp_ram_efficient_loading_does_not_zero_the_discriminator(tiny_model_dir, tmp_path):
    # In a subprocess: a process group in the test process would make later trainers think they are distributed.
    from gad_trl.vllm.launcher import free_port

    script = tmp_path / "rank1.py"
    script.write_text(FSDP_RANK1_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), tiny_model_dir, str(free_port())], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["plain_is_zero"], "transformers no longer zeroes non-rank-0 weights: the hazard is gone, re-check"
    assert result["disc_equals_student"]
    assert result["env_after"] == "true"  # restored for the student's own loading


class FakeDeepSpeedPlugin:
    """Records accelerate's `DeepSpeedPlugin.zero3_init_context_manager(enable=False)` calls."""

    def __init__(self):
        self.zero3_init_flag, self.calls = True, []

    @contextlib.contextmanager
    def zero3_init_context_manager(self, enable=False):
        old, self.zero3_init_flag = self.zero3_init_flag, enable
        self.calls.append(enable)
        try:
            yield
        finally:
            self.zero3_init_flag = old


def test_zero3_init_is_switched_off_while_the_discriminator_loads(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    plugin = FakeDeepSpeedPlugin()
    seen = []
    original = AutoModelForSequenceClassification.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(plugin.zero3_init_flag)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", classmethod(spy))
    load_discriminator(tiny_model_dir, None, {}, 0, deepspeed_plugin=plugin)
    assert plugin.calls == [False] and seen == [False] and plugin.zero3_init_flag is True
    with replicated_loading(None):  # no DeepSpeed: nothing to switch off
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"


def test_transformers_zero3_switch_is_off_while_the_discriminator_loads():
    """Under `accelerate launch` with ZeRO-3, transformers' `is_deepspeed_zero3_enabled()` reads the Trainer's
    DeepSpeed config and stays true inside the plugin's `zero3_init_context_manager(enable=False)`; a model built
    then comes out partitioned into empty parameters (the first real launch crashed: "'weight' must be 2-D")."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        plugin = FakeDeepSpeedPlugin()
        plugin.zero3_init_flag = False  # as accelerate leaves it: switching it off again is a no-op
        with replicated_loading(plugin):
            assert not is_deepspeed_zero3_enabled()
        assert is_deepspeed_zero3_enabled()  # restored for the student
    finally:
        unset_hf_deepspeed_config()
        del config


def test_scores_are_float32_under_bf16_autocast(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.model import backbone, last_token_scores

    torch.manual_seed(0)
    disc = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(disc.score.weight, std=1.0)
    ids = torch.randint(10, 200, (8, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = last_token_scores(disc, ids, mask)
        hidden = backbone(disc)(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
    expected = hidden.float() @ disc.score.weight.float().T
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, expected.squeeze(-1), atol=1e-5, rtol=1e-5)  # not rounded to bf16 (~1e-2 here)


# ------------------------------------------------------------------ 6. a discriminator config with a bad pad id
def test_out_of_range_pad_token_id_names_the_field_and_the_fix(tmp_path):
    import json

    from transformers import AutoConfig

    from gad_trl.discriminator.value_head import load_value_model, value_model_from_config
    from gad_trl.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "disc", seed=0)
    config = json.loads((tmp_path / "disc" / "config.json").read_text())
    vocab = config["vocab_size"]
    config["pad_token_id"] = vocab + 7
    (tmp_path / "disc" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json: pad_token_id={vocab + 7} is outside the vocabulary "
                                         rf"\(vocab_size={vocab}\).*Set pad_token_id to a token id below {vocab}"):
        load_value_model(path, num_labels=1)
    with pytest.raises(ValueError, match="pad_token_id=.* is outside the vocabulary"):
        value_model_from_config(AutoConfig.from_pretrained(path, num_labels=1))

