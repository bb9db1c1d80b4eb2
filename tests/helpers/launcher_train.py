"""Run by tests/cli/test_launch.py under `accelerate launch` (2 CPU processes, gloo; DeepSpeed with DS_ACCELERATOR=cpu).
In one launch, through `gad-trl gad`'s own `main`: a 3-step tiny GAD run that checkpoints at step 2 and saves, then
a second run resumed from that checkpoint. Writes `<out>/rank<k>.json` (launcher, discriminator layout, steps).
`--async-vllm URL` instead: one 3-step run generating on the vLLM server at URL with `async_generation`.
`--lora-vllm URL` instead: one 3-step run of a LoRA student whose adapter alone is synced to the server at URL
(`vllm_weight_sync lora`; under ZeRO-3 every process gathers the adapter's shards)."""

import json
import sys

from gad_trl.tiny import use_offline_env

use_offline_env()

from gad_trl.cli.gad import main, make_parser  # noqa: E402

model_dir, data_dir, out = sys.argv[1:4]
common = ["--config", "recipes/tiny/gad.yaml", "--model_name_or_path", model_dir, "--dataset_name", data_dir,
          "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2", "--critic_warmup_steps", "1",
          "--sft_warmup_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--bf16", "false",
          "--per_device_train_batch_size", "16"]  # fmt: skip  (8 prompts a step over 16 rows: checkpoint-2 ends
# epoch 0, so the resumed run's step 3 starts epoch 1, whose prompt order must be the uninterrupted run's)


def run(*extra):
    return main(*make_parser().parse_args_and_config([*common, *extra]))


if "--async-vllm" in sys.argv:
    url = sys.argv[sys.argv.index("--async-vllm") + 1]
    trainer = run("--output_dir", f"{out}/async", "--save_strategy", "no", "--use_vllm", "true", "--vllm_mode", "server",
                  "--vllm_weight_sync", "reload", "--vllm_server_base_url", url, "--vllm_server_timeout", "30",
                  "--async_generation", "true", "--vllm_importance_sampling_mode", "token_truncate")
    logged = [h for h in trainer.state.log_history if "async_generation/prefetched" in h]
    with open(f"{out}/rank{trainer.accelerator.process_index}.json", "w") as f:
        json.dump({"distributed_type": str(trainer.accelerator.distributed_type),
                   "num_processes": trainer.accelerator.num_processes,
                   "sharded": trainer.discriminator_component.sharded, "global_step": trainer.state.global_step,
                   "prefetched": [h["async_generation/prefetched"] for h in logged]}, f)
    import torch.distributed as dist

    trainer.accelerator.wait_for_everyone()
    dist.destroy_process_group()  # before exit: both ranks leave the gloo group together
    sys.exit(0)
if "--lora-vllm" in sys.argv:
    url = sys.argv[sys.argv.index("--lora-vllm") + 1]
    trainer = run("--output_dir", f"{out}/lora", "--save_strategy", "no", "--use_vllm", "true", "--vllm_mode", "server",
                  "--vllm_weight_sync", "lora", "--vllm_server_base_url", url, "--vllm_server_timeout", "30",
                  "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
                  # PEFT + ZeRO-3 + checkpointing + the SFT term is refused (gad_trl.trainer.peft_zero3_checkpointing_problem)
                  "--gradient_checkpointing", "false")
    generation = trainer.vllm_generation
    with open(f"{out}/rank{trainer.accelerator.process_index}.json", "w") as f:
        json.dump({"distributed_type": str(trainer.accelerator.distributed_type),
                   "num_processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
                   "syncs": generation.num_weight_syncs, "served": generation.vllm_client.model
                   if trainer.accelerator.is_main_process else None,
                   "weight_sync_dir": generation.weight_sync_dir}, f)
    import torch.distributed as dist

    trainer.accelerator.wait_for_everyone()
    dist.destroy_process_group()
    sys.exit(0)
full = run("--output_dir", f"{out}/full")
resumed = run("--output_dir", f"{out}/resumed", "--resume_from_checkpoint", f"{out}/full/checkpoint-2")
with open(f"{out}/rank{full.accelerator.process_index}.json", "w") as f:
    json.dump(
        {
            "distributed_type": str(full.accelerator.distributed_type),
            "num_processes": full.accelerator.num_processes,
            "sharded": [full.discriminator_component.sharded, resumed.discriminator_component.sharded],
            "global_steps": [full.state.global_step, resumed.state.global_step],
        },
        f,
    )
