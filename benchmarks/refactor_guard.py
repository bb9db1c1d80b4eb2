"""Refactor guard: the same tiny GAD runs before and after a change to how the discriminator is fed must log the same
metrics and end with the same discriminator weights.

    python -m benchmarks.refactor_guard --out /tmp/guard_before.json      # on the code before the change
    python -m benchmarks.refactor_guard --out /tmp/guard_after.json --compare /tmp/guard_before.json

Each setting trains 3 steps (critic warm-up, SFT warm-up, one GRPO step) on offline tiny models with transformers
generation, one torch thread, then records every logged number, a checksum of the final discriminator state dict, the
fixed held-out evaluation and the discriminator's scores of sampled completions (what judge agreement reads).
Settings: full discriminator, LoRA discriminator, shared base, a discriminator with its own tokenizer, k teacher
answers (with mean pooling, replay in replace mode and score shaping), teacher trajectories with tools. Async
generation needs a vLLM server and is left to its tests (tests/vllm/test_async_generation.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile

from gad_trl.tiny import use_offline_env

use_offline_env()

import torch  # noqa: E402


def _args(output_dir, **overrides):
    from gad_trl import GADConfig

    kwargs = dict(output_dir=str(output_dir), report_to="none", per_device_train_batch_size=4, num_generations=4,
                  max_completion_length=8, max_steps=3, logging_steps=1, save_strategy="no",
                  gradient_checkpointing=False, learning_rate=1e-3, beta=0.0, discriminator_learning_rate=1e-3,
                  seed=0, disable_tqdm=True, warn_on_unhealthy_metrics=False, critic_warmup_steps=1,
                  sft_warmup_steps=1, sft_loss_coef=0.1, per_device_eval_batch_size=4)
    kwargs.update(overrides)
    return GADConfig(**kwargs)


def _checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _judge_scores(trainer, triples) -> list[float]:
    component = trainer.discriminator_component
    if hasattr(component, "score_triples"):  # since issue 31 the component scores triples itself
        return component.score_triples(triples, trainer.args.per_device_eval_batch_size)
    from gad_trl.workflow.checkpoint_selection import trainer_discriminator_scores  # before it

    return trainer_discriminator_scores(trainer, triples)


def _run(name, root) -> dict:
    import peft
    from datasets import Dataset

    from gad_trl import GADTrainer
    from gad_trl.discriminator.heldout import sample_triples
    from gad_trl.tiny import add, build_tiny_tokenizer, save_tiny_model, save_tiny_tool_caller, tiny_gad_rows
    from gad_trl.tiny import tiny_tool_rows

    student = save_tiny_model(os.path.join(root, "student"), seed=0)
    rows = tiny_gad_rows(12, seed=0)
    eval_rows = tiny_gad_rows(6, seed=5)
    kwargs, overrides = {}, {}
    if name == "lora_discriminator":
        overrides = dict(discriminator_use_peft=True, discriminator_lora_r=4, discriminator_lora_alpha=8,
                         discriminator_lora_dropout=0.0)
    elif name == "shared_base":
        kwargs["peft_config"] = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM")
        overrides = dict(discriminator_shared_base=True, discriminator_lora_r=4, discriminator_lora_alpha=8,
                         discriminator_lora_dropout=0.0)
    elif name == "own_tokenizer":
        other = save_tiny_model(os.path.join(root, "other"), seed=3, tokenizer=build_tiny_tokenizer(400, other_family=True))
        overrides = dict(discriminator_model_name_or_path=other, max_completion_length=12)
    elif name == "k_answers":
        extra = tiny_gad_rows(12, seed=9)
        for i, (row, other) in enumerate(zip(rows, extra)):
            row["teacher_response"] = [row["teacher_response"], other["teacher_response"]] + (
                [row["teacher_response"]] if i % 3 == 0 else [])  # a duplicate answer weighs 1/k too
        overrides = dict(discriminator_pooling="mean", discriminator_replay_buffer_size=16,
                         discriminator_replay_ratio=0.25, discriminator_replay_mode="replace",
                         discriminator_length_penalty=0.1, discriminator_score_clip=3.0)
    elif name == "trajectories":
        student = save_tiny_tool_caller(os.path.join(root, "tool-caller"), steps=60)
        rows, eval_rows = tiny_tool_rows(8, seed=2), None
        kwargs["tools"] = [add]
        overrides = dict(discriminator_pooling="mean", max_completion_length=48, per_device_train_batch_size=2,
                         num_generations=2)
    elif name != "full":
        raise ValueError(name)
    if eval_rows is not None:
        overrides.update(discriminator_heldout_size=4)
    torch.manual_seed(0)
    trainer = GADTrainer(student, args=_args(os.path.join(root, "run"), **overrides), train_dataset=Dataset.from_list(rows),
                         eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows), **kwargs)
    trainer.train()
    out = {"log": [{k: v for k, v in h.items() if isinstance(v, (int, float)) and k not in WALL_CLOCK}
                   for h in trainer.state.log_history],
           "discriminator": _checksum(trainer.discriminator)}
    if eval_rows is not None:
        heldout = trainer.evaluate_discriminator_heldout()
        out["heldout"] = {k: v for k, v in heldout.items()}
        draws = [{"prompt": r["prompt"], "teacher_response": None, "row": i} for i, r in enumerate(eval_rows[:3])
                 for _ in range(2)]
        triples = sample_triples(trainer.model, trainer.processing_class, draws, 1, trainer.max_completion_length, 1.0, 4)
        out["judge_scores"] = _judge_scores(trainer, triples)
    return out


WALL_CLOCK = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
SETTINGS = ["full", "lora_discriminator", "shared_base", "own_tokenizer", "k_answers", "trajectories"]


def _differences(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = ({k: v for k, v in d.items() if k not in WALL_CLOCK} for d in (a, b))
        found = [f"{path}.{k}: only in {'before' if k in a else 'after'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            found += _differences(a[k], b[k], f"{path}.{k}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} entries before, {len(b)} after"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} before, {b!r} after"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default=None, help="a JSON written before the change: exit 1 on any difference")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for name in args.settings.split(","):
        with tempfile.TemporaryDirectory() as root:
            results[name] = _run(name, root)
        print(f"{name}: {len(results[name]['log'])} log entries, discriminator {results[name]['discriminator']}",
              flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        before = {k: v for k, v in before.items() if k in results}
        differences = _differences(before, results)
        for line in differences[:40]:
            print("DIFF", line)
        print(f"{len(differences)} differences over {len(results)} settings (exact equality)")
        return 1 if differences else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
