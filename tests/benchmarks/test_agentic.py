"""Smoke tests of the agentic benchmark's task (benchmarks/agentic.py): calculator, teacher, judge (no training)."""

import random

import pytest

from benchmarks.agentic import (
    TOOLS,
    _training_template,
    calculate,
    encode_rows,
    execute_calls,
    expression_of,
    judge,
    make_problem,
    make_rows,
    teacher_trajectory,
    tool_call,
    weaker_trajectory,
    well_formed_calls,
)

PROMPT = [{"role": "user", "content": "What is 347 * 29 + 18?"}]


def test_calculator_evaluates_integer_arithmetic_only():
    assert calculate("347 * 29 + 18") == "10081"
    assert calculate("10 - 3 * (2 + 1)") == "1"
    for bad in ("__import__('os')", "2 ** 10", "7 / 2", "1.5 + 1", "x + 1", "10 ** 100 * 10 ** 100"):
        with pytest.raises((ValueError, SyntaxError)):
            calculate(bad)
    assert execute_calls([tool_call("2 +")])[0]["content"].startswith("{'error'")  # as TRL reports a tool error


def test_calculator_schema_is_what_trl_needs():
    from transformers.utils import get_json_schema

    schema = get_json_schema(calculate)
    assert schema["function"]["name"] == "calculate"
    assert schema["function"]["parameters"]["properties"]["expression"]["type"] == "string"
    assert schema["function"]["parameters"]["required"] == ["expression"]


def test_judge_scores_full_rollouts():
    teacher = teacher_trajectory("347 * 29 + 18")
    assert judge(PROMPT, teacher) == 1.0
    wrong_final = teacher[:2] + [{"role": "assistant", "content": "The answer is 10018."}]
    assert judge(PROMPT, wrong_final) == 0.5  # right call, wrong final answer
    wrong_call = [{"role": "assistant", "content": "", "tool_calls": [tool_call("347 * 29 + 81")]},
                  {"role": "tool", "name": "calculate", "content": "10144"},
                  {"role": "assistant", "content": "The answer is 10144."}]
    assert judge(PROMPT, wrong_call) == 0.0
    # A malformed call is left as text by TRL's parser: it neither counts as a call nor as an answer.
    malformed = [{"role": "assistant", "content": '<tool_call>\n{"name": "calculate", "arguments": {"expression": '
                  '"347 * 29 + 18"}\n</tool_call>'}]
    assert well_formed_calls(malformed) == [] and judge(PROMPT, malformed) == 0.0
    wrong_tool = [{"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]}]
    assert judge(PROMPT, wrong_tool) == 0.0
    assert judge(PROMPT, [{"role": "assistant", "content": "The answer is 10081."}]) == 1.0  # no tool, still right
    assert judge(PROMPT, [{"role": "assistant", "content": "The answer is 10080."}]) == 0.0
    assert judge(PROMPT, []) == 0.0
    truncated = teacher[:2]  # ran out of budget after the tool result
    assert judge(PROMPT, truncated) == 0.5
    json_args = [dict(teacher[0], tool_calls=[{"type": "function", "function": {
        "name": "calculate", "arguments": '{"expression": "347 * 29 + 18"}'}}])]
    assert judge(PROMPT, json_args) == 0.5  # arguments as a JSON string (the data set's shape) read alike


def test_teacher_trajectories_normalise_and_encode_like_rollouts():
    from gad_trl.data import normalize_trajectory
    from gad_trl.tiny import build_tiny_tool_tokenizer

    rows = make_rows(5, "test")
    assert len({expression_of(r["prompt"]) for r in rows}) == 5
    for i, row in enumerate(rows):
        messages = normalize_trajectory(row["teacher_response"], i, "teacher_response")
        assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
        assert messages[0]["tool_calls"][0]["function"]["arguments"].startswith('{"expression": ')
        assert judge(row["prompt"], row["teacher_response"]) == 1.0
    tok = build_tiny_tool_tokenizer()
    ids, mask = encode_rows(tok, [rows[0]["prompt"]], [rows[0]["teacher_response"]])[0]
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1
    assert tok.unk_token_id is None or tok.unk_token_id not in ids
    masked = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "<tool_response>" in masked and "What is" in masked  # prompt and tool result: no loss


def test_training_template_renders_the_same_text_and_masks_like_gad():
    from gad_trl.tiny import build_tiny_tool_tokenizer

    tok = build_tiny_tool_tokenizer()
    row = make_rows(1, "mask")[0]
    conversation = row["prompt"] + row["teacher_response"]
    template = _training_template()
    assert tok.apply_chat_template(conversation, tools=TOOLS, tokenize=False) == tok.apply_chat_template(
        conversation, tools=TOOLS, tokenize=False, chat_template=template)
    out = tok.apply_chat_template(conversation, tools=TOOLS, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, chat_template=template)
    ids, mask = encode_rows(tok, [row["prompt"]], [row["teacher_response"]])[0]
    assert out["input_ids"][: len(ids)] == ids and list(out["assistant_masks"][: len(ids)]) == mask
    assert out["assistant_masks"][len(ids):] == [0] * (len(out["input_ids"]) - len(ids))  # the final "\n"


def test_problems_and_weaker_teacher():
    rng = random.Random(0)
    scores, skipped = [], 0
    for _ in range(200):
        expression, value = make_problem(rng)
        assert value >= 0 and int(calculate(expression)) == value
        prompt = [{"role": "user", "content": f"What is {expression}?"}]
        weak = weaker_trajectory(expression, rng, skip_prob=0.5, copy_error_prob=0.3)
        skipped += len(weak) == 1
        scores.append(judge(prompt, weak))
    assert 60 < skipped < 140
    assert 0.2 < sum(scores) / len(scores) < 0.6 and max(scores) == 1.0 and min(scores) == 0.0
