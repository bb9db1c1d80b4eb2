"""Reliability issue #30: teacher trajectories that no rollout could produce, duplicate teacher answers, SODA's draw
on resume, the resume key over the whole data set, mixed answer types, a bad discriminator pad id, MoE students,
trainers built without `__init__` and TRL's error wording, colocated vLLM on CPU."""

from __future__ import annotations

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError, prepare_gad_dataset
from gad_trl.testing import add, tiny_tool_rows
from tests.gad_helpers import make_args


def _call(name="add", call_id=None, a=1, b=2):
    call = {"type": "function", "function": {"name": name, "arguments": {"a": a, "b": b}}}
    return {**call, "id": call_id} if call_id else call


def _row(trajectory):
    return {"prompt": [{"role": "user", "content": "add 1 and 2"}], "teacher_response": trajectory}


# ---------------------------------------------------------------------------------------------------- 1. trajectories
def test_tool_call_without_result_is_refused_naming_the_row():
    rows = tiny_tool_rows(2)
    rows[1]["teacher_response"] = [
        {"role": "assistant", "content": "", "tool_calls": [_call()]},
        {"role": "assistant", "content": "1 plus 2 equals 3"},
    ]
    with pytest.raises(GADDataError, match=r"Row 1: .*'add' before it have no 'tool' result.*Add a"):
        prepare_gad_dataset(Dataset.from_list(rows))


def test_tool_result_without_call_is_refused():
    no_call = [{"role": "tool", "name": "add", "content": "3"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match=r"Row 0: .*message 0 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(no_call)]))
    extra = [{"role": "assistant", "content": "", "tool_calls": [_call()]},
             {"role": "tool", "name": "add", "content": "3"}, {"role": "tool", "name": "add", "content": "3"},
             {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="message 2 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(extra)]))
    wrong_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1")]},
                {"role": "tool", "name": "add", "content": "3", "tool_call_id": "c9"},
                {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="tool_call_id 'c9' matches no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(wrong_id)]))


def test_answered_calls_pass_by_id_and_by_order():
    by_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1"), _call(call_id="c2", a=2)]},
             {"role": "tool", "content": "4", "tool_call_id": "c2"}, {"role": "tool", "content": "3",
                                                                     "tool_call_id": "c1"},
             {"role": "assistant", "content": "3 and 4"}]
    ds = prepare_gad_dataset(Dataset.from_list([_row(by_id), *tiny_tool_rows(2)]))
    assert len(ds) == 3


def _tool_trainer(tmp_path, rows, **kwargs):
    from gad_trl import GADTrainer
    from gad_trl.testing import build_tiny_model, build_tiny_tool_tokenizer

    tok = build_tiny_tool_tokenizer()
    return GADTrainer(build_tiny_model(tok), args=make_args(tmp_path, max_completion_length=16),
                      processing_class=tok, train_dataset=Dataset.from_list(rows), **kwargs)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


def test_call_to_a_tool_the_student_lacks_is_refused(tmp_path):
    rows = tiny_tool_rows(4)
    rows[2]["teacher_response"][0]["tool_calls"][0]["function"]["name"] = "multiply"
    with pytest.raises(GADDataError, match=r"Row 2 of the train set: .*calls the tool 'multiply', which the student "
                                           r"does not have \(its tools: add\)"):
        _tool_trainer(tmp_path, rows, tools=[add])
    _tool_trainer(tmp_path, rows, tools=[add, multiply])  # the student has it: accepted
