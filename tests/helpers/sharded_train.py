"""Run by tests/discriminator/test_sharding.py under `torch.distributed.run` (2 CPU processes, gloo). In one launch:
  1. replicated discriminator (discriminator_sharding='none'), 3 steps with a checkpoint at step 2, and a run resumed
     from it;
  2. FSDP2-sharded discriminator ('fsdp2'), 3 steps with a checkpoint at step 2, then `save_model`;
  3. sharded again, loaded in bf16 (float32 master weights), resumed from its checkpoint to step 3.
Writes `<out>/rank<k>.json`: the gathered discriminators' largest differences, shard sizes, optimizer steps."""

import json
import sys

from gad_trl.tiny import tiny_gad_rows, use_offline_env

use_offline_env()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from gad_trl import GADConfig, GADTrainer  # noqa: E402
from gad_trl.discriminator.sharding import full_model_state_dict  # noqa: E402

model_dir, out = sys.argv[1], sys.argv[2]
rows = Dataset.from_list(tiny_gad_rows(16, seed=0))


def run(name, sharding, resume=None, **overrides):
    fields = dict(
        output_dir=f"{out}/{name}", report_to="none", use_cpu=True, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=8, max_steps=3, logging_steps=1, save_strategy="no", learning_rate=1e-3,
        discriminator_learning_rate=1e-3, seed=0, disable_tqdm=True, warn_on_unhealthy_metrics=False,
        discriminator_sharding=sharding, critic_warmup_steps=1, bf16=False,  # float32: comparable to 1e-5
    )  # fmt: skip
    args = GADConfig(**{**fields, **overrides})
    trainer = GADTrainer(model_dir, args=args, train_dataset=rows)
    trainer.initial = gathered(trainer)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def gathered(trainer):
    """Full discriminator weights on every rank (rank 0's gathered copy, broadcast)."""
    if trainer.discriminator_component.sharded:
        state = [full_model_state_dict(trainer.discriminator)]
        torch.distributed.broadcast_object_list(state, src=0)
        return state[0]
    return {k: v.detach().clone() for k, v in trainer.discriminator.state_dict().items()}


def max_diff(a, b):
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# Gradient checkpointing and chunked scoring on the sharded run (as the 7B recipe): FSDP2 re-gathers each layer for the
# recomputation and accumulates the reduce-scattered gradients of several backward passes; same gradient as one pass.
replicated = run("replicated", "none", save_strategy="steps", save_steps=2)
replicated_resumed = run("replicated_resumed", "none", resume=f"{out}/replicated/checkpoint-2")
sharded = run("sharded", "fsdp2", save_strategy="steps", save_steps=2, gradient_checkpointing=True,
              discriminator_mini_batch_size=3)
sharded.save_model()
# Loaded in bf16 (as the 7B recipe does): cast to float32 master weights as it is sharded, so the resume is still exact.
resumed = run("resumed", "fsdp2", resume=f"{out}/sharded/checkpoint-2", discriminator_init_kwargs={"dtype": "bfloat16"},
              gradient_checkpointing=True, discriminator_mini_batch_size=3)

full = {k: v.numel() for k, v in gathered(replicated).items()}
local = {n: p.to_local().numel() for n, p in sharded.discriminator.named_parameters()}
rank = sharded.accelerator.process_index
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "sharded_flags": [replicated.discriminator_component.sharded, sharded.discriminator_component.sharded],
            "sharded_vs_replicated": max_diff(gathered(sharded), gathered(replicated)),
            "resumed_vs_uninterrupted": max_diff(gathered(resumed), gathered(sharded)),
            "replicated_resumed_vs_uninterrupted": max_diff(gathered(replicated_resumed), gathered(replicated)),
            "changed": max_diff(gathered(sharded), sharded.initial),
            "same_start": max_diff(sharded.initial, replicated.initial),
            "local_numel": sum(local.values()),
            "full_numel": sum(full.values()),
            "param_dtypes": sorted({str(p.dtype) for p in sharded.discriminator.parameters()}),
            "bf16_loaded_param_dtypes": sorted({str(p.dtype) for p in resumed.discriminator.parameters()}),
            "optimizer_steps": sorted({int(s["step"]) for s in resumed.discriminator_optimizer.state.values()}),
            "global_step": resumed.state.global_step,
        },
        f,
    )

# Both ranks leave the gloo group together before exiting: a rank that exits while the other still holds the group
# can abort in gloo's teardown ("terminate called without an active exception"), seen once in a loaded suite run.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
