"""Run by tests/test_cpu_distributed.py under `torch.distributed.run` (2 CPU processes, gloo): trains GADTrainer for 2
steps and writes each rank's discriminator checksums and logged metrics to `<out>/rank<k>.json`.
`--no-all-reduce` switches the discriminator's gradient averaging off (shows what the test would catch);
`--async-vllm URL` generates on the vLLM server at URL with `async_generation=True` (3 steps); `--fsdp2` shards the
discriminator over the processes."""

import json
import sys

from gad_trl.tiny import tiny_gad_rows, use_offline_env

use_offline_env()

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from gad_trl import GADConfig, GADTrainer  # noqa: E402

model_dir, out = sys.argv[1], sys.argv[2]
settings = dict(
    output_dir=out, report_to="none", use_cpu=True, per_device_train_batch_size=4, num_generations=4,
    max_completion_length=8, max_steps=2, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
    learning_rate=1e-3, discriminator_learning_rate=1e-2, seed=0, disable_tqdm=True, warn_on_unhealthy_metrics=False,
)  # fmt: skip
if "--async-vllm" in sys.argv:
    settings.update(max_steps=3, use_vllm=True, vllm_mode="server", vllm_weight_sync="reload",
                    vllm_server_base_url=sys.argv[sys.argv.index("--async-vllm") + 1], vllm_server_timeout=30,
                    async_generation=True, vllm_importance_sampling_mode="token_truncate")
if "--fsdp2" in sys.argv:
    settings.update(discriminator_sharding="fsdp2")
args = GADConfig(**settings)
trainer = GADTrainer(model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(16, seed=0)))
if "--no-all-reduce" in sys.argv:
    trainer.discriminator_component.all_reduce_grads = lambda: None
def local(t):  # a sharded (FSDP2) discriminator holds DTensors: compare this rank's shard
    return t.to_local() if hasattr(t, "to_local") else t


before = {k: local(v).clone() for k, v in trainer.discriminator.state_dict().items()}
trainer.train()
state = {k: local(v) for k, v in trainer.discriminator.state_dict().items()}
rank = trainer.accelerator.process_index
logged = [h for h in trainer.state.log_history if "discriminator/accuracy" in h]
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(
        {
            "world_size": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "changed": any(not torch.equal(before[k], state[k]) for k in state),
            "checksums": [float(state[k].double().sum()) for k in sorted(state)],
            "teacher_prompts": [h["discriminator/num_teacher_sequences"] for h in logged],
            "accuracy": [h["discriminator/accuracy"] for h in logged],
            "loss": [h["discriminator/loss"] for h in logged],
            "steps": trainer.state.global_step,
            "sharded": trainer.discriminator_component.sharded,
            "prefetched": [h.get("async_generation/prefetched") for h in logged],
            "staleness": [h.get("async_generation/staleness") for h in logged],
        },
        f,
    )

# Both ranks leave the gloo group together before exiting: a rank that exits while the other still holds the group
# can abort in gloo's teardown ("terminate called without an active exception"), seen once in a loaded suite run.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
