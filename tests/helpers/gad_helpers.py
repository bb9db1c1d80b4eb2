"""Small builders shared by the trainer tests."""

import json
import threading
from pathlib import Path

import torch
from datasets import Dataset

from gad_trl import GADConfig, GADTrainer
from gad_trl.tiny import tiny_gad_rows

REPO = Path(__file__).resolve().parents[2]
TINY_GAD = str(REPO / "recipes" / "tiny" / "gad.yaml")
TINY_SEQKD = str(REPO / "recipes" / "tiny" / "seqkd.yaml")


def make_args(output_dir, **overrides):
    kwargs = dict(
        output_dir=str(output_dir),
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        learning_rate=1e-3,
        beta=0.0,  # no reference model: keeps the unit runs small (GADConfig's default is the paper's 1e-3)
        discriminator_learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
        warn_on_unhealthy_metrics=False,
    )
    kwargs.update(overrides)
    return GADConfig(**kwargs)


def make_trainer(model_dir, output_dir, num_rows=8, rows=None, **overrides):
    dataset = Dataset.from_list(rows if rows is not None else tiny_gad_rows(num_rows, seed=0))
    return GADTrainer(model_dir, args=make_args(output_dir, **overrides), train_dataset=dataset)


def params_of(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def same_params(a, b, atol=0.0):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def score_atol(trainer):
    """Float32 (CPU) scores agree to rounding; under bf16 autocast (GPU) two paths may differ in the 3rd digit."""
    return 3e-2 if trainer.args.bf16 else 1e-5


def response_sequences(trainer):
    """Three (prompt + teacher response + EOS) token lists of different lengths, and their response starts."""
    tok = trainer.processing_class
    seqs, starts = [], []
    for r in tiny_gad_rows(3, seed=1):
        prompt = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
        p = tok(prompt, add_special_tokens=False).input_ids
        seqs.append(p + tok(r["teacher_response"], add_special_tokens=False).input_ids + [tok.eos_token_id])
        starts.append(len(p))
    return seqs, starts


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scripted_tool_rollout(trainer, scripted, prompts, tools):
    """One rollout through TRL's own tool loop (`GRPOTrainer._generate`) with the student's generation replaced by
    `scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False) -> (ids, None)`; the
    per-batch tool dicts set as TRL sets them. Returns `_generate`'s outputs and the batch's train metrics."""
    trainer._generate_single_turn = scripted
    named = {getattr(t, "__name__", str(t)): t for t in tools}
    trainer._sync_tool_dicts, trainer._async_tool_dicts = [named] * len(prompts), [{}] * len(prompts)
    trainer.model.train()
    return trainer._generate(prompts), trainer._metrics["train"]


# ------------------------------------------------------------------ shared by tests of several modules
SMUGGLED = "yes sure <|im_end|> the <|endoftext|> end"  # teacher text with control-token strings in it


def special_ids(tok) -> set[int]:
    return {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")}


class RunsCodeWhenUnpickled:
    """Unpickling calls `open(marker, "w")`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker):
    """A torch.save'd optimizer-like state whose unpickling would run code (`RunsCodeWhenUnpickled`)."""
    torch.save({"state": {}, "param_groups": [{"params": ["x"]}], "payload": RunsCodeWhenUnpickled(marker)}, path)


TRL_MODEL = "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"  # the name TRL's tests use; never loaded here

TOOL_RELEASE = threading.Event()  # set at the end of a test: `add`'s hung thread then returns


def add(a: int, b: int) -> str:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    if a == 1:  # a tool that never returns (within the test)
        TOOL_RELEASE.wait(60)
        return "late"
    if a == 2:  # a tool that returns megabytes
        return "x" * 2_000_000
    return str(a + b)
