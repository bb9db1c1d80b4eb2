"""Offline tiny models and data sets for tests, the tiny recipe, notebooks and benchmarks.

Nothing here touches the Hub: a word-level tokenizer is trained with `tokenizers`, given a Qwen-style chat
template, and a randomly initialised Qwen2 with a few hundred thousand parameters is saved next to it. The saved
folder loads with `from_pretrained` exactly as a Hub checkpoint does, and vLLM can serve it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

# Qwen2.5-Instruct's template, reduced to what the tiny models need (no tools). The generation prompt ends with
# "<|im_start|>assistant\n" and each assistant turn ends with "<|im_end|>", which is also the EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]

_WORDS = (
    "the a an of to and in is it you that he was for on are with as I his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said each she which do their time if "
    "will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small end put home "
    "read hand port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father answer "
    "yes sure hello please thanks sum plus minus equals reverse upper lower list item step result because so "
    "zero one two three four five six seven eight nine ten user assistant system ok"
).split()
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?-+=*/()[]'\"#")


OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}


def use_offline_env() -> None:
    """No Hub, no W&B, no tokenizer threads (tests, benchmarks). Call before transformers is imported; values
    already set in the environment win."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)]
    lines += [" ".join(_CHARS), " ".join(w.upper() for w in _WORDS), " ".join(w.capitalize() for w in _WORDS)]
    return lines


# Another family's layout (for a discriminator with its own tokenizer): other special tokens, another template.
OTHER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|turn|>' + message['role'] + ': ' + message['content'] + '<|end_turn|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn|>assistant: ' }}{% endif %}"
)
OTHER_SPECIAL_TOKENS = ["<pad>", "<|end_turn|>", "<|turn|>", "<unk>"]


def build_tiny_tokenizer(vocab_size: int = 1000, other_family: bool = False):
    """A byte-level BPE tokenizer (Qwen2/GPT-2 style) trained on a toy corpus, wrapped as a fast tokenizer.
    `other_family`: other special tokens and chat template (`OTHER_CHAT_TEMPLATE`), for two-tokenizer tests.

    Byte-level BPE matters: transformers 5 reloads any `qwen2` checkpoint's tokenizer as `Qwen2Tokenizer`, which
    rebuilds the byte-level pipeline from `tokenizer.json`'s vocab and merges; a tokenizer of another kind would
    tokenise differently after the reload (and in vLLM).
    """
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = OTHER_SPECIAL_TOKENS if other_family else SPECIAL_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    pad, eos, start, unk = (specials[0], specials[1], specials[2], specials[3]) if other_family else (
        "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<unk>")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=[start],
    )
    fast.chat_template = OTHER_CHAT_TEMPLATE if other_family else CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """A random-init Qwen2 causal LM sized for CPU tests (head_dim 32 works with vLLM's CPU backend)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    return model


def save_tiny_model(output_dir: str | os.PathLike, seed: int = 0, tokenizer=None, **model_kwargs) -> str:
    """Build the tiny tokenizer (unless given) and model and `save_pretrained` both to `output_dir`; returns the
    path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return str(output_dir)


def tiny_gad_rows(num_rows: int = 16, seed: int = 0, fmt: str = "conversational") -> list[dict]:
    """Rows of a toy black-box distillation set: the 'teacher' repeats the words it was given, upper-cased.

    `fmt`: "conversational" (TRL `prompt` messages), "verl" (`content` messages, as GAD's parquet files) or
    "standard" (plain-text prompt).
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        words = [rng.choice(_WORDS[:120]) for _ in range(rng.randint(2, 4))]
        question = "write " + " ".join(words) + " upper"
        answer = " ".join(w.upper() for w in words)
        if fmt == "conversational":
            rows.append({"prompt": [{"role": "user", "content": question}], "teacher_response": answer})
        elif fmt == "verl":
            rows.append({"content": [{"role": "user", "content": question}], "teacher_response": answer})
        elif fmt == "standard":
            rows.append({"prompt": question, "teacher_response": answer})
        else:
            raise ValueError(f"Unknown fmt={fmt!r}; use 'conversational', 'verl' or 'standard'.")
    return rows


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


# --------------------------------------------------------------------------------------------------------------------
# Tool calling: a tiny student that calls a calculator (tests, the agentic toy task, docs examples)
# --------------------------------------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


# Qwen2.5's tool-calling layout (`<tool_call>` JSON in assistant turns, tool results as `<tool_response>` in a user
# turn, "<|im_end|>" closing every turn), with a one-line tool list instead of Qwen's 400-token system prompt: the
# tiny models then train and generate on short sequences.
TOOL_CHAT_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\nTools: ' }}{%- for tool in tools %}"
    "{{ (tool.function.name if tool.function is defined else tool.name) + ('' if loop.last else ', ') }}"
    "{%- endfor %}{{ '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' + (message.content or '') }}"
    "{%- for call in (message.tool_calls or []) %}"
    "{%- if message.content or not loop.first %}{{ '\n' }}{%- endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' }}"
    "{{ call.function.arguments | tojson }}{{ '}\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)


def build_tiny_tool_tokenizer(vocab_size: int = 1000):
    """`build_tiny_tokenizer` with a tool-calling chat template in Qwen2.5's layout (`TOOL_CHAT_TEMPLATE`) and the
    response parser TRL uses for Qwen's `<tool_call>` format (`trl.chat_template_utils.qwen3_template`), so TRL's
    `GRPOTrainer` parses the tiny model's tool calls."""
    from trl.chat_template_utils import qwen3_template

    tok = build_tiny_tokenizer(vocab_size)
    tok.chat_template = TOOL_CHAT_TEMPLATE
    tok.response_template = qwen3_template
    return tok


def tiny_tool_rows(num_rows: int = 8, seed: int = 0) -> list[dict]:
    """Rows of a toy agentic set: "add A and B", the teacher's answer a trajectory that calls `add`, reads the result
    and answers "A plus B equals S"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({
            "prompt": [{"role": "user", "content": f"add {a} and {b}"}],
            "teacher_response": [
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}]},
                {"role": "tool", "name": "add", "content": str(a + b)},
                {"role": "assistant", "content": f"{a} plus {b} equals {a + b}"},
            ],
        })
    return rows


def save_tiny_tool_caller(output_dir: str | os.PathLike, rows: list[dict] | None = None, steps: int = 120,
                          seed: int = 0, lr: float = 3e-3) -> str:
    """A tiny student that emits tool calls: `build_tiny_tool_tokenizer` + a tiny Qwen2, given a short SFT on the
    teacher trajectories of `rows` (default `tiny_tool_rows(8)`) laid out as its rollouts are
    (`gad_trl.discriminator.trajectory`), loss on its own tokens only; saved to `output_dir`."""
    import torch

    from .data import normalize_trajectory
    from .discriminator.trajectory import TrajectoryEncoder

    rows = rows if rows is not None else tiny_tool_rows(8, seed)
    tok = build_tiny_tool_tokenizer()
    model = build_tiny_model(tok, seed=seed)
    encoder = TrajectoryEncoder(tok, [add])
    examples = [encoder.sft_example(row["prompt"], normalize_trajectory(row["teacher_response"], i, "teacher"))
                for i, row in enumerate(rows)]
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.tensor([e["input_ids"] + [tok.pad_token_id] * (width - len(e["input_ids"])) for e in examples])
    attention = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in examples])
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tok.save_pretrained(output_dir)
    return str(output_dir)
