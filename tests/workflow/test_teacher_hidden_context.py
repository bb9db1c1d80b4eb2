"""generate-teacher as a context-distillation tool: a hidden system prompt from a file and few-shot turns, sent to
the teacher and never saved; best-of-N filtering of its answers (`--answer_filter`, `--keep_answers`), every
candidate kept and prompts without a passing answer listed, not dropped."""

import json

import pytest

from gad_trl.tiny import write_jsonl
from gad_trl.workflow.teacher import TeacherGenerationArguments, generate_teacher

from tests.helpers.fault_server import FaultServer, echo_upper
from tests.helpers.gad_helpers import read_jsonl

pytestmark = pytest.mark.timeout(60)

FEW_SHOT = [{"role": "user", "content": "example question"}, {"role": "assistant", "content": "Ahoy! example answer"}]


def keep_odd_samples(prompt_messages, answer):
    """Test filter: answers of an odd sample index pass; every answer to question 2 fails."""
    return "number 2" not in prompt_messages[-1]["content"] and answer.endswith(("(sample 1)", "(sample 3)"))


def raising_filter(prompt_messages, answer):
    raise RuntimeError("filter bug")


def write_inputs(tmp_path, n=4):
    data = write_jsonl([{"prompt": [{"role": "user", "content": f"question number {i}"}]} for i in range(n)],
                       tmp_path / "prompts.jsonl")
    system = tmp_path / "system.txt"
    system.write_text("You are a pirate.\nAlways say Ahoy!\n")
    few = tmp_path / "few_shot.json"
    few.write_text(json.dumps(FEW_SHOT))
    return data, str(system), str(few)


def test_hidden_system_prompt_file_and_few_shot_are_sent_not_saved(tmp_path):
    data, system, few = write_inputs(tmp_path, n=2)
    seen = []

    def responder(messages):
        seen.append(messages)
        return echo_upper(messages)

    with FaultServer() as server:
        server.responder = responder
        args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url,
                                          system_prompt_file=system, few_shot_file=few, concurrency=1)
        summary = generate_teacher(args)
    assert summary["done"] == 2
    assert args.system_prompt == "You are a pirate.\nAlways say Ahoy!"
    for messages in seen:
        assert messages[0] == {"role": "system", "content": "You are a pirate.\nAlways say Ahoy!"}
        assert messages[1:3] == FEW_SHOT and messages[3]["role"] == "user" and len(messages) == 4
    for row in read_jsonl(args.output):  # the student trains on the prompt as it is
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert "system" not in json.dumps(row)


def test_answer_filter_keeps_passing_answers_and_lists_the_rest(tmp_path):
    data, _, _ = write_inputs(tmp_path, n=4)
    with FaultServer() as server:
        args = TeacherGenerationArguments(
            dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url, num_answers=4, seed=0,
            answer_filter=f"{__name__}:keep_odd_samples", concurrency=2)
        summary = generate_teacher(args)
    f = summary["filter"]
    assert (f["candidates"], f["passed"], f["rows_kept"], f["rows_without_passing_answer"]) == (16, 6, 3, 1)
    rows = read_jsonl(args.output)
    assert [r["row_id"] for r in rows] == ["0", "1", "3"]
    for r in rows:
        assert [a[-10:] for a in r["teacher_response"]] == ["(sample 1)", "(sample 3)"]
        assert r["teacher_finish_reason"] == ["stop", "stop"]
    rejected = read_jsonl(args.filtered_path)
    assert [r["row_id"] for r in rejected] == ["2"] and len(rejected[0]["teacher_response"]) == 4
    assert len(read_jsonl(args.progress_path)) == 4  # every candidate kept, for another filter later
    assert all(len(r["teacher_response"]) == 4 for r in read_jsonl(args.progress_path))

    # Re-filtering with --keep_answers 1 reuses the candidates: no request is sent, answers become strings.
    with FaultServer() as server:
        again = TeacherGenerationArguments(
            dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url, num_answers=4, seed=0,
            answer_filter=f"{__name__}:keep_odd_samples", keep_answers=1)
        summary = generate_teacher(again)
        assert server.log == []
    assert [r["teacher_response"][-10:] for r in read_jsonl(again.output)] == ["(sample 1)"] * 3


def test_a_raising_filter_stops_with_the_row_named_and_keeps_the_candidates(tmp_path):
    data, _, _ = write_inputs(tmp_path, n=2)
    with FaultServer() as server:
        args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url,
                                          answer_filter=f"{__name__}:raising_filter")
        with pytest.raises(ValueError, match=r"raised on row '0'.*filter bug.*candidates are kept"):
            generate_teacher(args)
    assert len(read_jsonl(args.progress_path)) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(system_prompt="x", system_prompt_file="SYSTEM"), "not both"),
    (dict(system_prompt_file="EMPTY"), "is empty"),
    (dict(system_prompt_file="missing.txt"), "cannot be read"),
    (dict(few_shot_file="ENDS_WITH_USER"), "ends with a user turn"),
    (dict(few_shot_file="WRONG_ROLE"), r"message 0 must be \{\"role\": \"user\""),
    (dict(keep_answers=1), "set --answer_filter"),
    (dict(answer_filter="m:f", keep_answers=3, num_answers=2), "between 1 and --num_answers"),
])
def test_bad_hidden_context_options_are_refused_with_the_fix(tmp_path, kwargs, message):
    files = {"SYSTEM": "text", "EMPTY": "  \n", "ENDS_WITH_USER": json.dumps(FEW_SHOT[:1]),
             "WRONG_ROLE": json.dumps(list(reversed(FEW_SHOT)))}
    for key, value in list(kwargs.items()):
        if value in files:
            path = tmp_path / value
            path.write_text(files[value])
            kwargs[key] = str(path)
        elif key.endswith("_file"):
            kwargs[key] = str(tmp_path / value)
    with pytest.raises(ValueError, match=message):
        TeacherGenerationArguments(dataset_name="d.jsonl", output=str(tmp_path / "o.jsonl"), **kwargs)
