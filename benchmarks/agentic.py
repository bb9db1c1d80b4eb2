"""Agentic quality benchmark: arithmetic with a calculator tool, judged by rule (issue 19, item 5).

    .venv/bin/python -m benchmarks.agentic                  # full run (3 seeds)
    .venv/bin/python -m benchmarks.agentic --quick          # smaller run (fewer prompts and steps, 1 seed)
    .venv/bin/python -m benchmarks.agentic --seeds 0,1      # other seeds
    .venv/bin/python -m benchmarks.agentic --report-only RESULTS.json   # re-write a report from a run's JSON

Setup (all offline, on CPU, all measured; reported in benchmarks/results/quality_agentic.md):
- Task: "What is 347 * 29 + 18?" (2-3 integer operands, + - *, results up to ~5 digits: too big for a tiny model
  to compute in its head). Tool: `calculate(expression)`, an AST-checked evaluator of + - * on integers.
- Teacher (a program): the trajectory [assistant `<tool_call>` calculate(expression=<the prompt's expression>),
  the tool's result, final assistant "The answer is N."], in Qwen2.5's tool layout (`gad_trl.tiny.
  TOOL_CHAT_TEMPLATE`). Only its messages are used.
- Student: a tiny Qwen2 (`gad_trl.tiny.build_tiny_model` with `build_tiny_tool_tokenizer`) pre-trained from random
  init on a *weaker teacher*'s trajectories over prompts disjoint from the train/eval prompts: it skips the tool and
  guesses a wrong number in `skip_prob` of the answers (greedy decoding follows that mode), and copies the expression
  or the tool result with one digit changed now and then; half of its pre-training steps are generic copying practice
  ("Repeat: <digits>", `pretrain_student`), without which it never learned to copy. It knows the layout, calls the
  tool less often than the teacher, and makes mistakes: the 'instruct student' distillation starts from. Each seed
  pre-trains its own (`--shared-base`: one for all seeds; `--reuse-base`: reuse one of the same settings).
- Methods, all from that same student, on the same train prompts: SeqKD (TRL SFTTrainer on the teacher trajectories,
  1 epoch), SeqKD-long (3 epochs: as many epochs as GAD's SFT warm-up + GRPO phases), GAD (GADTrainer with
  tools=[calculate]: critic warm-up, SFT warm-up on the trajectories, then GRPO on discriminator rewards over the
  student's live tool-calling rollouts, which TRL's GRPOTrainer runs: it parses `<tool_call>`, executes the tool and
  appends the `<tool_response>`).
- Loss masks, the same for every row: cross-entropy on the student's own tokens only (each assistant turn's tokens
  through its `<|im_end|>`), never on the prompt or the tool results. GAD's SFT warm-up does this by itself
  (`gad_trl.discriminator.trajectory`); for TRL's SFTTrainer the SeqKD rows use `assistant_only_loss=True` with
  `_training_template()` (TOOL_CHAT_TEMPLATE plus `{% generation %}` markers, the same text), and the run checks on
  the first training row that SFTTrainer's labels mask exactly the tokens GAD masks (`sft_mask_matches_gad`).
  (gad_trl's own SeqKD path reads text answers only, so the SeqKD rows use TRL's SFTTrainer directly.)
- Evaluation: held-out prompts, each student run through the same tool loop as TRL's (`rollout` below: generate,
  parse with `trl.chat_template_utils.parse_response`, execute, append the tool-result tokens, generate again; at most
  `--max-tool-iterations` tool turns and `--max-completion-length` completion tokens, TRL's rules), greedy and sampled
  (T=--temperature, fixed seed). Judge (`judge`): 1.0 if the final assistant message's last number is the right
  result; else 0.5 if a well-formed `calculate` call had an expression of the right value; else 0. Also reported:
  mean length (the student's own tokens, tool results excluded), tool-call rate (fraction of rollouts with at least
  one well-formed call, greedy), and `trainer.train()`'s CPU seconds.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import operator
import random
import re
import statistics
import sys
import time
from pathlib import Path

from .common import RESULTS_DIR, machine, mean_std, peak_rss_mb, seed_everything

# --------------------------------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------------------------------
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_MAX_ABS = 10**12


def _eval_node(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        value = _OPS[type(node.op)](_eval_node(node.left), _eval_node(node.right))
        if abs(value) > _MAX_ABS:
            raise ValueError("result too large")
        return value
    raise ValueError(f"unsupported expression element: {type(node).__name__}")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression of integers with +, - and * (and parentheses).

    Args:
        expression: The expression to evaluate, e.g. "347 * 29 + 18".
    """
    if not isinstance(expression, str) or len(expression) > 200:
        raise ValueError("expression must be a string of at most 200 characters")
    tree = ast.parse(expression.strip(), mode="eval")
    return str(_eval_node(tree.body))


TOOLS = [calculate]

# TOOL_CHAT_TEMPLATE with `{% generation %}` markers around each assistant turn's own tokens (content, tool calls, the
# closing <|im_end|>; not the "\n" the template writes after it, which the rollouts and GAD's masks leave out too):
# the same text, so TRL's SFTTrainer can mask like GAD (`assistant_only_loss=True`).
_ASSISTANT_OPEN = "{{ '<|im_start|>assistant\n' + (message.content or '') }}"
_ASSISTANT_CLOSE = "{%- endfor %}{{ '<|im_end|>\n' }}{%- elif message.role == 'tool' %}"


def _training_template() -> str:
    from gad_trl.tiny import TOOL_CHAT_TEMPLATE

    assert TOOL_CHAT_TEMPLATE.count(_ASSISTANT_OPEN) == 1 and TOOL_CHAT_TEMPLATE.count(_ASSISTANT_CLOSE) == 1, (
        "gad_trl.tiny.TOOL_CHAT_TEMPLATE changed: update benchmarks/agentic.py's training template")
    return (TOOL_CHAT_TEMPLATE
            .replace(_ASSISTANT_OPEN, "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message.content or '' }}")
            .replace(_ASSISTANT_CLOSE, "{%- endfor %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
                                      "{%- elif message.role == 'tool' %}"))


# --------------------------------------------------------------------------------------------------------------------
# Problems, teacher, weaker teacher, judge
# --------------------------------------------------------------------------------------------------------------------
_PROMPT_RE = re.compile(r"What is (.+)\?$")


def make_problem(rng: random.Random) -> tuple[str, int]:
    """An expression of 2-3 integer operands (first 10-999, others 2-99) and + - *, with a non-negative result."""
    while True:
        a = rng.randint(10, 999)
        if rng.random() < 0.3:
            op = rng.choice("+-*")
            expr = f"{a} {op} {rng.randint(2, 99)}"
        else:
            op1, op2 = rng.choice("*+-"), rng.choice("+-*")
            expr = f"{a} {op1} {rng.randint(2, 99)} {op2} {rng.randint(2, 99)}"
        value = int(calculate(expr))
        if value >= 0:
            return expr, value


def prompt_messages(expression: str) -> list[dict]:
    return [{"role": "user", "content": f"What is {expression}?"}]


def expression_of(prompt: list[dict] | str) -> str:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    m = _PROMPT_RE.search(text.strip())
    if not m:
        raise ValueError(f"not a calculator prompt: {text!r}")
    return m.group(1)


def tool_call(expression: str) -> dict:
    return {"type": "function", "function": {"name": "calculate", "arguments": {"expression": expression}}}


def teacher_trajectory(expression: str) -> list[dict]:
    """The teacher: call the calculator with the prompt's expression, read the result, state it."""
    result = calculate(expression)
    return [
        {"role": "assistant", "content": "", "tool_calls": [tool_call(expression)]},
        {"role": "tool", "name": "calculate", "content": result},
        {"role": "assistant", "content": f"The answer is {result}."},
    ]


def _change_digit(text: str, rng: random.Random) -> str:
    positions = [i for i, ch in enumerate(text) if ch.isdigit()]
    i = rng.choice(positions)
    leading = (i == 0 or not text[i - 1].isdigit()) and i + 1 < len(text) and text[i + 1].isdigit()
    new = rng.choice([d for d in ("123456789" if leading else "0123456789") if d != text[i]])
    return text[:i] + new + text[i + 1:]


def weaker_trajectory(expression: str, rng: random.Random, skip_prob: float, copy_error_prob: float) -> list[dict]:
    """The weaker teacher the student is pre-trained on: with probability `skip_prob` no tool call and a guessed
    number of the right magnitude (wrong); otherwise the teacher's trajectory with, each with probability
    `copy_error_prob`, one digit of the expression miscopied into the call and one digit of the result miscopied into
    the final answer."""
    value = calculate(expression)
    if rng.random() < skip_prob:
        guess = _change_digit(value, rng) if len(value) > 1 else str(int(value) + rng.randint(1, 9))
        return [{"role": "assistant", "content": f"The answer is {guess}."}]
    called = _change_digit(expression, rng) if rng.random() < copy_error_prob else expression
    result = calculate(called)
    if int(result) < 0:
        called, result = expression, value
    stated = _change_digit(result, rng) if rng.random() < copy_error_prob else result
    return [
        {"role": "assistant", "content": "", "tool_calls": [tool_call(called)]},
        {"role": "tool", "name": "calculate", "content": result},
        {"role": "assistant", "content": f"The answer is {stated}."},
    ]


_NUMBER_RE = re.compile(r"-?\d+")


def _arguments(call: dict) -> dict | None:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return None
    args = function.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return args if isinstance(args, dict) else None


def well_formed_calls(messages: list[dict]) -> list[str]:
    """The expressions of the parsed `calculate` calls whose only argument is a string `expression`."""
    out = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for call in m.get("tool_calls") or []:
            args = _arguments(call)
            if call["function"].get("name") == "calculate" and args is not None and set(args) == {"expression"} \
                    and isinstance(args["expression"], str):
                out.append(args["expression"])
    return out


def judge(prompt: list[dict] | str, rollout: list[dict]) -> float:
    """Rule judge of a full rollout (assistant turns, tool results, the final answer) for the prompt's expression.

    1.0: the final message is an assistant answer (no tool call, no unparsed `<tool_call>` text) whose last number is
    the right result (however it was reached). 0.5: otherwise, a well-formed `calculate` call (parsed, only the
    `expression` argument) had an expression of the right value. 0.0: anything else (malformed calls, wrong or
    missing answers)."""
    target = int(calculate(expression_of(prompt)))
    final = rollout[-1] if rollout else {}
    if final.get("role") == "assistant" and not final.get("tool_calls"):
        content = final.get("content") or ""
        numbers = _NUMBER_RE.findall(content)
        if "<tool_call>" not in content and numbers and int(numbers[-1]) == target:
            return 1.0
    for expression in well_formed_calls(rollout):
        try:
            if int(calculate(expression)) == target:
                return 0.5
        except (ValueError, SyntaxError):
            continue
    return 0.0


def make_rows(n: int, seed: str, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` distinct problems not in `exclude`, as GAD rows (`prompt` messages, the teacher trajectory)."""
    rng = random.Random(seed)
    seen, rows = set(exclude), []
    while len(rows) < n:
        expression, _ = make_problem(rng)
        if expression in seen:
            continue
        seen.add(expression)
        rows.append({"prompt": prompt_messages(expression), "teacher_response": teacher_trajectory(expression)})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Student pre-training on the weaker teacher (loss on the student's own tokens, as every method trains)
# --------------------------------------------------------------------------------------------------------------------
def encode_rows(tok, prompts: list[list[dict]], trajectories: list[list[dict]]):
    """(prompt ids + completion ids, loss mask) per row, laid out as the student's rollouts are."""
    from gad_trl.data import normalize_trajectory
    from gad_trl.discriminator.trajectory import TrajectoryEncoder

    encoder = TrajectoryEncoder(tok, TOOLS)
    out = []
    for i, (prompt, trajectory) in enumerate(zip(prompts, trajectories)):
        p = encoder._ids(prompt, add_generation_prompt=True)
        ids, mask, _ = encoder.encode(prompt, normalize_trajectory(trajectory, i, "teacher_response"))
        out.append((p + ids, [0] * len(p) + mask))
    return out


def pretrain_student(tok, seed: int, out_dir, exclude: set[str], args) -> dict:
    import torch

    from gad_trl.tiny import build_tiny_model

    seed_everything(seed)
    model = build_tiny_model(tok, seed=seed, hidden_size=args.hidden_size, num_layers=args.num_layers)
    rng = random.Random(f"pretrain-{seed}")
    prompts, trajectories = [], []
    for row in make_rows(args.n_pretrain, f"pretrain-{seed}", exclude):
        prompts.append(row["prompt"])
        trajectories.append(weaker_trajectory(expression_of(row["prompt"]), rng, args.skip_prob,
                                              args.copy_error_prob))
    examples = encode_rows(tok, prompts, trajectories)
    # Generic copying practice ("Repeat: <digits or an expression>" -> the same text): a 2-layer model learns to copy
    # (the skill the tool call and the final answer need) far sooner from short, dense examples than from the
    # trajectories alone, where it stayed on a no-copy plateau (loss ~0.38 after 1000 steps, measured).
    copy_prompts, copy_answers = [], []
    for _ in range(args.n_pretrain):
        text = make_problem(rng)[0] if rng.random() < 0.5 else str(rng.randint(10, 10**rng.randint(2, 6)))
        copy_prompts.append([{"role": "user", "content": f"Repeat: {text}"}])
        copy_answers.append([{"role": "assistant", "content": text}])
    copies = encode_rows(tok, copy_prompts, copy_answers)
    steps = args.pretrain_steps
    opt = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    losses, copy_losses = [], []
    for step in range(steps):
        is_copy = rng.random() < args.copy_frac
        pool = copies if is_copy else examples
        batch = [pool[rng.randrange(len(pool))] for _ in range(args.pretrain_batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s, _ in batch])
        att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
        labels = torch.tensor([[t if m else -100 for t, m in zip(s, mask)] + [-100] * (width - len(s))
                               for s, mask in batch])
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        (copy_losses if is_copy else losses).append(loss.item())
        if args.log_every and step % args.log_every == 0:
            print(f"  pretrain step {step} trajectory loss {statistics.mean(losses[-args.log_every // 2:] or [0]):.3f}"
                  f" copy loss {statistics.mean(copy_losses[-args.log_every // 2:] or [0]):.3f}", flush=True)
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"final_loss": statistics.mean(losses[-50:]), "final_copy_loss": statistics.mean(copy_losses[-50:] or [0]),
            "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0, "examples": len(examples)}


def pretrained_base(tok, seed: int, work: Path, reserved: set[str], args) -> tuple[str, dict]:
    """The starting student of `seed` (of seed 0 for every seed under --shared-base), pre-trained here or, under
    --reuse-base, reused from the work dir when it was pre-trained with the same settings."""
    base_seed = 0 if args.shared_base else seed
    base_dir = work / f"base_{base_seed}"
    key = {k: getattr(args, k) for k in ("n_pretrain", "hidden_size", "num_layers", "pretrain_steps",
                                         "pretrain_batch_size", "pretrain_lr", "skip_prob", "copy_error_prob",
                                         "copy_frac")}
    key.update(seed=base_seed, reserved=sorted(reserved))
    marker = base_dir / "pretrain_key.json"
    if args.reuse_base and marker.exists() and json.loads(marker.read_text())["key"] == key:
        info = dict(json.loads(marker.read_text())["info"], reused=True)
    else:
        info = pretrain_student(tok, base_seed, base_dir, reserved, args)
        marker.write_text(json.dumps({"key": key, "info": info}))
    return str(base_dir), dict(info, base_seed=base_seed)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation: the same tool loop as TRL's GRPOTrainer._tool_call_loop
# --------------------------------------------------------------------------------------------------------------------
def tool_suffix_ids(tok, tool_messages: list[dict]) -> list[int]:
    """The chat template's tokens from an assistant turn's end-of-turn token to the next generation prompt, for these
    tool results (TRL's `GRPOTrainer._get_tool_suffix_ids`)."""
    dummy = [{"role": "user", "content": "dummy"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]}]
    prefix = tok.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, return_dict=False)
    full = tok.apply_chat_template(dummy + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    eos = [i for i, t in enumerate(prefix) if t == tok.eos_token_id]
    if eos:
        prefix = prefix[: eos[-1] + 1]
    assert full[: len(prefix)] == prefix
    return list(full[len(prefix):])


def execute_calls(calls: list[dict], tools=TOOLS) -> list[dict]:
    """Tool messages for parsed calls, as TRL runs them: `tool(**arguments)`, an exception -> {"error": ...}."""
    by_name = {t.__name__: t for t in tools}
    out = []
    for call in calls:
        function = call.get("function", {})
        name = function.get("name", "unknown")
        try:
            if call.get("type") != "function":
                raise ValueError(f"Unsupported tool call type: {call.get('type')}")
            if name not in by_name:
                raise ValueError(f"Tool {name} not found.")
            result = by_name[name](**(function.get("arguments") or {}))
        except Exception as e:  # noqa: BLE001 - a tool error is the student's result, as in TRL
            result = {"error": str(e)}
        out.append({"role": "tool", "name": name, "content": str(result)})
    return out


def rollout(model, tok, prompts: list[list[dict]], max_completion_length: int, max_tool_iterations: int,
            do_sample: bool = False, temperature: float = 0.8, seed: int = 0, batch_size: int = 64):
    """Run each prompt through the tool loop; returns (messages per prompt, own-token count per prompt)."""
    import torch
    from trl.chat_template_utils import parse_response

    model.eval()
    side = tok.padding_side
    tok.padding_side = "left"
    if do_sample:
        torch.manual_seed(seed)
    prompt_ids = [list(tok.apply_chat_template(p, tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)) for p in prompts]
    contexts = [list(p) for p in prompt_ids]
    used = [0] * len(prompts)  # completion tokens so far (own + tool results), TRL's budget
    own = [0] * len(prompts)
    messages: list[list[dict]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    iteration = 0
    while active:
        new_ids = {}
        for k in range(0, len(active), batch_size):
            chunk = active[k:k + batch_size]
            width = max(len(contexts[i]) for i in chunk)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(contexts[i])) + contexts[i] for i in chunk])
            att = torch.tensor([[0] * (width - len(contexts[i])) + [1] * len(contexts[i]) for i in chunk])
            budget = max(max_completion_length - used[i] for i in chunk)
            kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else \
                dict(do_sample=False)
            with torch.no_grad():
                gen = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=budget,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs)
            for i, row in zip(chunk, gen[:, width:].tolist()):
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id) + 1]
                new_ids[i] = row[: max_completion_length - used[i]]
        still = []
        for i in active:
            ids = new_ids[i]
            own[i] += len(ids)
            used[i] += len(ids)
            message = parse_response(tok, ids, prefix=contexts[i], tools=TOOLS) if ids else {}
            if message:
                messages[i].append(message)
            if not message.get("tool_calls") or iteration >= max_tool_iterations:
                continue
            results = execute_calls(message["tool_calls"])
            suffix = tool_suffix_ids(tok, results)
            if used[i] + len(suffix) > max_completion_length:  # TRL drops a tool result past the budget
                continue
            messages[i].extend(results)
            contexts[i] = contexts[i] + ids + suffix
            used[i] += len(suffix)
            still.append(i)
        active = still
        iteration += 1
    tok.padding_side = side
    return messages, own


def evaluate(model, tok, rows, args, do_sample=False, seed=4321) -> dict:
    prompts = [r["prompt"] for r in rows]
    msgs, own = rollout(model, tok, prompts, args.max_completion_length, args.max_tool_iterations, do_sample=do_sample,
                        temperature=args.temperature, seed=seed)
    scores = [judge(p, m) for p, m in zip(prompts, msgs)]
    return {"judge": statistics.mean(scores), "len": statistics.mean(own),
            "tool_call_rate": statistics.mean(bool(well_formed_calls(m)) for m in msgs),
            "full_credit": statistics.mean(s == 1.0 for s in scores),
            "examples": [{"prompt": p[-1]["content"], "rollout": m, "score": s}
                         for p, m, s in list(zip(prompts, msgs, scores))[:3]]}


def evaluate_both(model, tok, rows, args) -> dict:
    greedy = evaluate(model, tok, rows, args)
    sampled = evaluate(model, tok, rows, args, do_sample=True)
    out = {k: v for k, v in greedy.items()}
    out.update({"sampled": sampled["judge"], "sampled_tool_call_rate": sampled["tool_call_rate"],
                "sampled_len": sampled["len"]})
    return out


# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
def _cpu_run_kwargs(seed):
    from .quality import cpu_run_kwargs

    return cpu_run_kwargs(seed)


def sft_dataset(rows):
    """TRL conversational prompt-completion rows: the trajectory as the completion, the tool schemas in `tools`."""
    from datasets import Dataset
    from transformers.utils import get_json_schema

    from gad_trl.data import normalize_trajectory
    from gad_trl.discriminator.trajectory import render_messages

    tools = json.dumps([get_json_schema(t) for t in TOOLS])
    return Dataset.from_list([
        {"prompt": r["prompt"],
         "completion": render_messages(normalize_trajectory(r["teacher_response"], i, "teacher_response")),
         "tools": tools}
        for i, r in enumerate(rows)])


def run_seqkd(base_dir, tok, train_rows, epochs, args, seed, out_dir):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    sft_tok = copy.deepcopy(tok)
    sft_tok.chat_template = _training_template()
    cfg = SFTConfig(output_dir=out_dir, per_device_train_batch_size=args.prompts_per_step, num_train_epochs=epochs,
                    learning_rate=args.lr, logging_steps=10, assistant_only_loss=True, max_length=None,
                    **_cpu_run_kwargs(seed))
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=sft_dataset(train_rows), processing_class=sft_tok)
    # Fairness check: SFTTrainer's labels mask exactly the tokens GAD's SFT warm-up masks (first training row).
    first = trainer.train_dataset[0]
    ids, mask = encode_rows(tok, [train_rows[0]["prompt"]], [train_rows[0]["teacher_response"]])[0]
    if "labels" in first:
        trained = [int(label != -100) for label in first["labels"]]
    else:
        trained = [int(a and c) for a, c in zip(first["assistant_masks"], first["completion_mask"])]
    matches = (first["input_ids"][: len(ids)] == ids and trained[: len(ids)] == mask
               and not any(trained[len(ids):]))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return trainer.model, {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
                           "steps": trainer.state.global_step, "sft_mask_matches_gad": matches}


def run_gad(base_dir, tok, train_rows, args, seed, out_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from gad_trl import GADConfig, GADTrainer

    steps_per_epoch = max(1, len(train_rows) // args.prompts_per_step)
    sft_steps = round(args.sft_warmup_epochs * steps_per_epoch)
    gad_steps = round(args.gad_epochs * steps_per_epoch)
    cfg = GADConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations,
        gradient_accumulation_steps=1,
        max_steps=args.critic_warmup_steps + sft_steps + gad_steps,
        learning_rate=args.lr,
        beta=0.0,
        temperature=args.temperature,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=args.max_tool_iterations,
        critic_warmup_steps=args.critic_warmup_steps,
        sft_warmup_steps=sft_steps,
        discriminator_learning_rate=args.disc_lr,
        discriminator_lr_scheduler_type="constant",
        discriminator_pooling=args.disc_pooling,
        logging_steps=args.gad_logging_steps,
        warn_on_unhealthy_metrics=False,
        use_vllm=False,
        **_cpu_run_kwargs(seed),
    )
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    rows = [{"prompt": r["prompt"], "teacher_response": r["teacher_response"]} for r in train_rows]
    trainer = GADTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         tools=TOOLS)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    info = {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
            "steps": trainer.state.global_step,
            "schedule": f"{args.critic_warmup_steps} critic + {sft_steps} SFT + {gad_steps} GRPO steps"}
    keys = ("step", "discriminator/accuracy", "discriminator/score_diff", "reward_std", "tools/call_frequency",
            "tools/failure_frequency", "completions/mean_length", "sft/loss", "loss")
    info["log"] = [{k: h.get(k) for k in keys if k in h} for h in trainer.state.log_history
                   if "discriminator/accuracy" in h or "tools/call_frequency" in h]
    return trainer.model, info


# --------------------------------------------------------------------------------------------------------------------
# Driver and report
# --------------------------------------------------------------------------------------------------------------------
METHODS = ("seqkd", "seqkd_long", "gad")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller run: fewer prompts and steps, 1 seed")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--workdir", default="/tmp/gad_bench_agentic")
    p.add_argument("--out", default=None, help="markdown results file (default benchmarks/results/"
                   "quality_agentic[_quick].md)")
    p.add_argument("--reuse-base", action="store_true",
                   help="reuse a pre-trained student found in --workdir with the same settings")
    p.add_argument("--shared-base", action="store_true",
                   help="one pre-trained student (seed 0) for every seed: seeds then vary the distillation runs only")
    p.add_argument("--pretrain-only", action="store_true", help="pre-train (or find) the students and stop")
    p.add_argument("--report-only", default=None, metavar="JSON",
                   help="no training: write the report from this results file (e.g. a run's .partial.json, written "
                   "after every seed) with the settings recorded in it")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=None)
    p.add_argument("--n-pretrain", type=int, default=3000)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--pretrain-batch-size", type=int, default=32)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--copy-frac", type=float, default=0.5,
                   help="fraction of pre-training steps on generic copying examples (see pretrain_student)")
    p.add_argument("--skip-prob", type=float, default=0.6, help="weaker teacher: no tool call, a wrong guess")
    p.add_argument("--copy-error-prob", type=float, default=0.25, help="weaker teacher: one digit miscopied")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--critic-warmup-steps", type=int, default=None)
    p.add_argument("--sft-warmup-epochs", type=float, default=1.0)
    p.add_argument("--gad-epochs", type=float, default=2.0, help="epochs of GAD's GRPO phase")
    p.add_argument("--lr", type=float, default=1e-4, help="student LR (SeqKD, GAD's SFT warm-up and GRPO)")
    p.add_argument("--disc-lr", type=float, default=3e-4)
    p.add_argument("--disc-pooling", default="last", choices=["last", "mean"])
    p.add_argument("--max-completion-length", type=int, default=160)
    p.add_argument("--max-tool-iterations", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--gad-logging-steps", type=int, default=5)
    p.add_argument("--log-every", type=int, default=0, help="print the pre-training loss every N steps")
    a = p.parse_args(argv)
    q = a.quick
    a.seeds = [int(s) for s in (a.seeds or ("0" if q else "0,1,2")).split(",")]
    a.n_train = a.n_train or (32 if q else 64)
    a.n_eval = a.n_eval or (24 if q else 64)
    a.pretrain_steps = a.pretrain_steps or (300 if q else 2500)
    a.critic_warmup_steps = (4 if q else 10) if a.critic_warmup_steps is None else a.critic_warmup_steps
    a.methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    a.out = a.out or str(RESULTS_DIR / ("quality_agentic_quick.md" if q else "quality_agentic.md"))
    a.argv = list(sys.argv[1:] if argv is None else argv)
    return a


def report_only(args):
    results = json.loads(Path(args.report_only).read_text())
    out, argv, source = args.out, args.argv, args.report_only
    for k, v in results["args"].items():
        setattr(args, k, v)
    args.out = out if "--out" in argv else args.out
    results.setdefault("wall_s", float("nan"))
    results.setdefault("peak_rss_mb", float("nan"))
    results["report_from"] = source
    write_report(args, results)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.report_only:
        return report_only(args)
    from gad_trl.tiny import use_offline_env

    use_offline_env()
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from gad_trl.tiny import build_tiny_tool_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    tok = build_tiny_tool_tokenizer()
    train_rows = make_rows(args.n_train, "agentic-train")
    train_exprs = {expression_of(r["prompt"]) for r in train_rows}
    eval_rows = make_rows(args.n_eval, "agentic-eval", exclude=train_exprs)
    reserved = train_exprs | {expression_of(r["prompt"]) for r in eval_rows}
    assert not train_exprs & {expression_of(r["prompt"]) for r in eval_rows}
    teacher = statistics.mean(judge(r["prompt"], r["teacher_response"]) for r in eval_rows)
    work = Path(args.workdir)
    results = {"args": {k: v for k, v in vars(args).items()}, "machine": machine(), "teacher": teacher, "seeds": {}}
    for seed in args.seeds:
        print(f"=== seed {seed}", flush=True)
        res = {}
        base_dir, res["pretrain"] = pretrained_base(tok, seed, work, reserved, args)
        print(f"  pretrain {res['pretrain']}", flush=True)
        if args.pretrain_only:
            continue
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        res["before"] = evaluate_both(base, tok, eval_rows, args)
        print(f"  before {_brief(res['before'])}", flush=True)
        for name in args.methods:
            seed_everything(seed)
            if name == "gad":
                m, info = run_gad(base_dir, tok, train_rows, args, seed, str(work / f"gad_{seed}"))
            else:
                epochs = args.sft_warmup_epochs * (1 if name == "seqkd" else 3)
                m, info = run_seqkd(base_dir, tok, train_rows, epochs, args, seed, str(work / f"{name}_{seed}"))
            m.to("cpu")
            res[name] = evaluate_both(m, tok, eval_rows, args)
            res[name].update(info)
            print(f"  {name} {_brief(res[name])}", flush=True)
        results["seeds"][seed] = res
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(results, indent=1, default=str))
    if args.pretrain_only:
        return results
    results["wall_s"] = time.perf_counter() - t_start
    results["peak_rss_mb"] = peak_rss_mb()
    write_report(args, results)
    partial = Path(args.out).with_suffix(".partial.json")
    if partial.exists():
        partial.unlink()
    return results


def _brief(r: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k not in ("examples", "log")}


LABELS = {"before": "before (pre-trained student)", "seqkd": "SeqKD (1 ep SFT on trajectories)",
          "seqkd_long": "SeqKD-long (3 ep SFT, epoch-matched to GAD)",
          "gad": "GAD (critic + SFT warm-up + GRPO on tool rollouts)"}


def write_report(args, results):
    seeds = list(results["seeds"])
    methods = ["before"] + [m for m in METHODS if m in args.methods]
    lines = ["# Quality benchmark: agentic toy task (calculator tool)\n"]
    cmd = ".venv/bin/python -m benchmarks.agentic" + (" " + " ".join(args.argv) if args.argv else "")
    if results.get("report_from"):
        lines.append(f"Report written by `--report-only {results['report_from']}` from the run recorded there "
                     "(its command, seeds, wall time and peak RSS; NaN where that run did not finish).\n")
    reused = [s for s in seeds if results["seeds"][s]["pretrain"].get("reused")]
    reused_note = (f" Pre-trained student(s) of seed(s) {', '.join(map(str, reused))} reused from the work dir "
                   "(`--reuse-base`, same settings): their pre-training ran before this command and is not in its wall "
                   "time." if reused else "")
    plural = "s" if len(seeds) > 1 else ""
    lines.append(f"Command: `{cmd}` (wall time {results['wall_s'] / 60:.1f} min, {results['machine']}, peak RSS "
                 f"{results['peak_rss_mb']:.0f} MB). Seeds: {', '.join(map(str, seeds))} ({len(seeds)} seed{plural})."
                 f" {args.n_eval} held-out prompts (none in the {args.n_train} train prompts); mean ± std over "
                 f"seeds.{reused_note}\n")
    lines.append("Task: \"What is 347 * 29 + 18?\"; tool `calculate(expression)`; teacher = a program whose trajectory "
                 "calls the tool with the prompt's expression and answers \"The answer is N.\". Judge (rule, on the "
                 "whole rollout): 1.0 = the final answer's last number is right; 0.5 = not that, but a well-formed "
                 "`calculate` call had an expression of the right value; 0 = otherwise. Every student is run through "
                 "the same tool loop as TRL's GRPOTrainer (`benchmarks/agentic.py: rollout`: generate, parse with "
                 "`trl.chat_template_utils.parse_response`, execute, append the tool result, generate again; at most "
                 f"{args.max_tool_iterations} tool turns, {args.max_completion_length} completion tokens).\n")
    lines.append("| method | judge, greedy | judge, sampled T=" f"{args.temperature:g}" " | full credit, greedy | "
                 "tool-call rate, greedy | tool-call rate, sampled | mean length (own tokens) | train CPU s |")
    lines.append("|---|---|---|---|---|---|---|---|")
    lines.append(f"| teacher (program) | {results['teacher']:.3f} | | 1.000 | 1.000 | | | |")
    for m in methods:
        cells = []
        for key in ("judge", "sampled", "full_credit", "tool_call_rate", "sampled_tool_call_rate"):
            mu, sd = mean_std([results["seeds"][s][m][key] for s in seeds])
            cells.append(f"{mu:.3f} ± {sd:.3f}")
        cells.append(f"{statistics.mean(results['seeds'][s][m]['len'] for s in seeds):.1f}")
        cpu = [results["seeds"][s][m].get("train_cpu_s") for s in seeds]
        cells.append(f"{statistics.mean(cpu):.0f}" if None not in cpu else "")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per seed (each seed pre-trains its own student" + (", except under --shared-base" if not
                 results["args"].get("shared_base") else "; here --shared-base: one student, seed 0, for all") +
                 "), judge greedy / sampled:\n")
    lines.append("| method | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|" + "---|" * len(seeds))
    for m in methods:
        lines.append(f"| {LABELS[m]} | " + " | ".join(
            f"{results['seeds'][s][m]['judge']:.3f} / {results['seeds'][s][m]['sampled']:.3f}" for s in seeds) + " |")
    lines.append("")
    lines.append("Training cost per seed (`trainer.train()`; CPU seconds of this process, which other jobs on a shared "
                 "machine do not inflate; wall seconds can be):\n")
    lines.append("| method | optimizer steps | train wall s (mean) | train CPU s (mean) |")
    lines.append("|---|---|---|---|")
    for m in methods[1:]:
        r0 = results["seeds"][seeds[0]][m]
        extra = f" ({r0['schedule']})" if "schedule" in r0 else ""
        lines.append(f"| {LABELS[m]} | {r0['steps']}{extra} | "
                     f"{statistics.mean(results['seeds'][s][m]['train_s'] for s in seeds):.0f} | "
                     f"{statistics.mean(results['seeds'][s][m]['train_cpu_s'] for s in seeds):.0f} |")
    pt = [results["seeds"][s]["pretrain"] for s in seeds]
    lines.append(f"| student pre-training (weaker teacher) | {args.pretrain_steps} | "
                 f"{statistics.mean(p['seconds'] for p in pt):.0f} | {statistics.mean(p['cpu_s'] for p in pt):.0f} |")
    lines.append("")
    checks = [results["seeds"][s][m].get("sft_mask_matches_gad") for s in seeds for m in ("seqkd", "seqkd_long")
              if m in results["seeds"][s]]
    if checks:
        lines.append(f"Loss masks: SeqKD rows = TRL SFTTrainer, `assistant_only_loss=True` with the tool template plus "
                     f"`{{% generation %}}` markers; SFTTrainer's labels equal GAD's SFT mask on the first row "
                     f"(prompt and tool results masked): {'yes' if all(checks) else 'NO'} in {len(checks)} of "
                     f"{len(checks)} runs checked.\n" if all(checks) else
                     f"Loss masks: SFTTrainer's labels DIFFER from GAD's SFT mask in "
                     f"{sum(not c for c in checks)} of {len(checks)} runs.\n")
    lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in results["args"].items()
                                          if k not in ("out", "workdir", "quick", "argv")) + "\n")
    s0 = seeds[0]
    log = results["seeds"][s0].get("gad", {}).get("log") or []
    if log:
        lines.append(f"GAD training log (seed {s0}; every {args.gad_logging_steps} steps; `tools/call_frequency` = "
                     "TRL's tool calls per rollout):\n")
        keys = [k for k in ("step", "discriminator/accuracy", "discriminator/score_diff", "reward_std",
                            "tools/call_frequency", "tools/failure_frequency", "completions/mean_length", "sft/loss",
                            "loss") if any(k in h for h in log)]
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for h in log:
            lines.append("| " + " | ".join("" if h.get(k) is None else f"{h[k]:.3g}" for k in keys) + " |")
        lines.append("")
    lines.append(f"Example greedy rollouts (seed {s0}, first eval prompt):\n")
    for m in methods:
        ex = results["seeds"][s0][m]["examples"][0]
        lines.append(f"- {LABELS[m]}, \"{ex['prompt']}\" (score {ex['score']}): `{json.dumps(ex['rollout'])[:400]}`")
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nwrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
