"""`gad-trl generate-teacher --tools module:function,...`: teacher trajectories through the OpenAI tool-calling API,
against a scripted fault server (tool calls on the first turns, a final answer once it has read the results) and a
real vLLM server (`--enable-auto-tool-choice --tool-call-parser hermes`) serving a tiny model taught to call `add`."""

from __future__ import annotations

import json
import threading

import pytest

from gad_trl.data import normalize_teacher_responses, normalize_trajectory
from gad_trl.tiny import write_jsonl
from gad_trl.workflow.teacher import TeacherGenerationArguments, generate_teacher
from gad_trl.workflow.tool_calling import ToolSpecError, resolve_tools, tool_schemas
from tests.helpers.fault_server import FaultServer, tool_script
from tests.helpers.gad_helpers import add as hanging_add  # returns megabytes for a=2
from tests.helpers.gad_helpers import read_jsonl

pytestmark = pytest.mark.timeout(120)

RELEASE = threading.Event()  # lets the hanging tool's thread end at teardown


def boom(x: int) -> int:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError(f"boom went the tool on {x}")


def hang(x: int) -> int:
    """Never answers in time.

    Args:
        x: Anything.
    """
    RELEASE.wait(30)
    return x


def no_docstring(x: int) -> int:
    return x


NOT_A_FUNCTION = 3
HERE = __name__  # "tests.workflow.test_tool_calling" under pytest


@pytest.fixture(autouse=True)
def _release_hanging_tools():
    RELEASE.clear()
    yield
    RELEASE.set()


def tool_prompts(n):
    return [{"prompt": [{"role": "user", "content": f"add {i} and {i + 1}"}]} for i in range(n)]


def make_args(tmp_path, server, n=2, tools="gad_trl.tiny:add", output="out.jsonl", **kw):
    data = write_jsonl(tool_prompts(n), tmp_path / "prompts.jsonl")
    kw.setdefault("max_retries", 1)
    kw.setdefault("request_timeout", 5.0)
    kw.setdefault("concurrency", 2)
    return TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / output), base_url=server.url,
                                      tools=tools, **kw)


def add_from_prompt(messages):
    words = next(m["content"] for m in messages if m["role"] == "user").split()
    return [[("add", {"a": int(words[1]), "b": int(words[3])})]]


def per_prompt_script(messages):
    return tool_script(add_from_prompt(messages))(messages)


def test_tool_is_run_and_its_result_is_in_the_trajectory(tmp_path):
    with FaultServer(responder=per_prompt_script) as server:
        args = make_args(tmp_path, server, n=3, output="out.parquet")
        summary = generate_teacher(args)
    assert summary["failed"] == 0 and summary["done"] == 3
    from datasets import Dataset

    table = Dataset.from_parquet(args.output)
    for i, row in enumerate(table):
        trajectory = row["teacher_response"]
        normalized = normalize_trajectory(trajectory, i, "teacher_response")
        assert [m["role"] for m in normalized] == ["assistant", "tool", "assistant"]
        (call,) = normalized[0]["tool_calls"]
        assert call["function"]["name"] == "add" and json.loads(call["function"]["arguments"]) == {"a": i, "b": i + 1}
        assert normalized[1]["content"] == str(2 * i + 1) and normalized[1]["name"] == "add"
        assert normalized[1]["tool_call_id"] == call["id"] == "call_0_0"
        assert normalized[2]["content"] == f"FINAL {2 * i + 1}"
        assert row["teacher_finish_reason"] == "stop"
        assert len(normalize_teacher_responses(trajectory, i, "teacher_response")) == 1
    # What was sent: the tools' schemas with every request; the second turn carries the call and its result.
    first = [q for q in server.requests if q["messages"][-1]["content"] == "add 0 and 1"][0]
    assert first["tools"] == [{"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "The first number."},
                                                        "b": {"type": "integer", "description": "The second number."}},
                       "required": ["a", "b"]}}}]
    second = [q for q in server.requests if q["messages"][-1]["role"] == "tool"][0]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][1]["tool_calls"][0]["function"]["name"] == "add"

    from gad_trl.data import prepare_gad_dataset

    assert len(prepare_gad_dataset(table)) == 3  # the trainer's own validation accepts the trajectories


def test_tool_errors_go_back_to_the_model(tmp_path):
    """A raising tool, a hanging tool (past --tool_timeout), an unknown tool and arguments that are not an object: each
    call's result is an error text the model reads; the trajectory goes on to its final answer."""
    script = tool_script([[("boom", {"x": 1}), ("hang", {"x": 2})], [("nope", {}), ("add", {"a": "x"})]])
    with FaultServer(responder=script) as server:
        args = make_args(tmp_path, server, n=1, tools=f"{HERE}:boom, {HERE}:hang,gad_trl.tiny:add",
                         tool_timeout=0.5)
        summary = generate_teacher(args)
    assert summary["failed"] == 0, read_jsonl(args.errors_path)
    (row,) = read_jsonl(args.output)
    trajectory = normalize_trajectory(row["teacher_response"], 0, "teacher_response")
    assert [m["role"] for m in trajectory] == ["assistant", "tool", "tool", "assistant", "tool", "tool", "assistant"]
    results = [m["content"] for m in trajectory if m["role"] == "tool"]
    assert results[0] == str({"error": "RuntimeError: boom went the tool on 1"})
    assert results[1] == str({"error": "Tool hang timed out: no result after 0.5 s (tool_timeout)."})
    assert "Tool nope not found" in results[2]
    assert results[3].startswith("{'error': \"TypeError: add() missing 1 required positional argument: 'b'")
    assert trajectory[-1]["content"] == "FINAL " + " | ".join(results)


def test_bad_json_arguments_go_back_to_the_model_then_fail_the_row(tmp_path):
    """Arguments that are not JSON: the model reads the error (as in TRL) and may go on, but such a call cannot be
    stored (the trainer holds each call's arguments as a JSON object): the row is listed, naming the message."""
    script = tool_script([[("add", "{not json")], [("add", "[1, 2]")]])
    with FaultServer(responder=script) as server:
        args = make_args(tmp_path, server, n=1)
        summary = generate_teacher(args)
    assert summary["failed"] == 1
    sent = [m["content"] for m in server.requests[-1]["messages"] if m["role"] == "tool"]
    assert "the arguments of add are not valid JSON" in sent[0]
    assert sent[1] == str({"error": "ValueError: the arguments of add must be a JSON object, got list"})
    (error,) = read_jsonl(args.errors_path)
    assert "Row 0: column 'teacher_response' message 0: the arguments of tool call 'add' are not JSON" in error["error"]


def test_max_tool_calls_fails_the_row(tmp_path):
    with FaultServer(responder=tool_script([], forever=("add", {"a": 1, "b": 2}))) as server:
        args = make_args(tmp_path, server, n=2, max_tool_calls=3)
        summary = generate_teacher(args)
    assert summary["failed"] == 2 and summary["output"] is None
    errors = read_jsonl(args.errors_path)
    assert sorted(e["row_id"] for e in errors) == ["0", "1"]
    assert all("more than 3 tool calls (--max_tool_calls)" in e["error"] for e in errors)
    assert read_jsonl(args.progress_path) == []  # no trajectory without a final answer
    assert len(server.requests) == 2 * 4  # 3 calls run, the 4th asked for ends the row


def test_empty_final_answer_is_a_failed_row(tmp_path):
    with FaultServer(responder=tool_script([[("add", {"a": 1, "b": 2})]], final=lambda m: " ")) as server:
        args = make_args(tmp_path, server, n=1)
        summary = generate_teacher(args)
    assert summary["failed"] == 1
    (error,) = read_jsonl(args.errors_path)
    assert "Row 0: column 'teacher_response' message 2 is an empty assistant turn" in error["error"]


def test_k_trajectories_and_resume(tmp_path):
    """--num_answers 2 --tools: two independent request chains per prompt (seed + answer index); a failed chain is
    listed with its answer index and only it is asked again."""
    with FaultServer(responder=per_prompt_script) as server:
        server.plan = {"add 1 and 2": ["ok", "ok", "400"]}  # row 1: the second chain's first request fails
        args = make_args(tmp_path, server, n=2, num_answers=2, seed=7, concurrency=1)
        summary = generate_teacher(args)
        assert summary["failed"] == 1 and summary["failed_ids"] == ["1"]
        (error,) = read_jsonl(args.errors_path)
        assert error["row_id"] == "1" and error["answer_index"] == 1 and "400" in error["error"]
        before = len(server.requests)
        summary = generate_teacher(args)
        again = server.requests[before:]
    assert summary["failed"] == 0 and summary["output"] == args.output
    assert {q["seed"] for q in again} == {8} and len(again) == 2  # one chain: the call turn and the final turn
    rows = read_jsonl(args.output)
    for i, row in enumerate(rows):
        answers = normalize_teacher_responses(row["teacher_response"], i, "teacher_response")
        assert len(answers) == 2 and all(a[-1]["content"].startswith(f"FINAL {2 * i + 1} (sample ") for a in answers)
        assert row["teacher_finish_reason"] == ["stop", "stop"]
    assert {q["seed"] for q in server.requests} == {7, 8}


def test_bad_tool_specs_are_named():
    for spec, message in [
        ("gad_trl.tiny", "'tiny' in 'gad_trl' is a module, not a function"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("gad_trl.tiny:no_such_function", "has no attribute 'no_such_function'"),
        (f"{HERE}:NOT_A_FUNCTION", "is a int, not a function"),
        ("gad_trl.tiny.add", None),  # module.function works too (as reward_funcs)
    ]:
        if message is None:
            assert resolve_tools(spec)[0].__name__ == "add"
            continue
        with pytest.raises(ToolSpecError, match=message) as info:
            resolve_tools(spec)
        assert spec.split(":")[0].rpartition(".")[0] in str(info.value)
    with pytest.raises(ToolSpecError, match="no_docstring.*type hints.*Google-style docstring"):
        tool_schemas(resolve_tools(f"{HERE}:no_docstring"))
    with pytest.raises(ToolSpecError, match="two functions called 'add'"):
        tool_schemas(resolve_tools("gad_trl.tiny:add,gad_trl.tiny:add"))
    with pytest.raises(ValueError, match="--tools names no function"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="o.jsonl", tools=" , ")
    with pytest.raises(ValueError, match="--tool_timeout must be > 0"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="o.jsonl", tools="m:f", tool_timeout=0)


def test_bad_tool_spec_fails_before_any_request(tmp_path):
    with FaultServer() as server:
        args = make_args(tmp_path, server, tools="gad_trl.tiny:add,nope_module:f")
        with pytest.raises(ToolSpecError, match="nope_module"):
            generate_teacher(args)
    assert server.requests == []


def test_cli_flags_and_help(tmp_path, capsys):
    from gad_trl.cli.main import main

    with pytest.raises(SystemExit):
        main(["generate-teacher", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--num_answers", "--tools", "--max_tool_calls", "--tool_timeout"):
        assert flag in text
    with FaultServer(responder=per_prompt_script) as server:
        data = write_jsonl(tool_prompts(2), tmp_path / "prompts.jsonl")
        out = tmp_path / "out.jsonl"
        assert main(["generate-teacher", "--dataset_name", data, "--output", str(out), "--base_url", server.url,
                     "--tools", "gad_trl.tiny:add", "--max_tool_calls", "2"]) == 0
    assert [r["teacher_response"][-1]["content"] for r in read_jsonl(out)] == ["FINAL 1", "FINAL 3"]


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_trajectories_from_a_real_vllm_server_with_hermes_tool_calls(vllm_tool_server, tmp_path):
    """The prompts the tiny model was taught on (greedy): vLLM's hermes parser reads its `<tool_call>` JSON, the call
    runs here, its result goes back as a `tool` message and the model answers. (On prompts it was not taught, the
    tiny model sometimes emits broken JSON, e.g. '<tool_call>\\n{"name": "add", "arguments": {"a": 5}, "b": 9, ': the
    parser then returns it as plain text.)"""
    from datasets import Dataset

    from gad_trl.data import prepare_gad_dataset
    from gad_trl.tiny import tiny_tool_rows
    server = vllm_tool_server
    taught = tiny_tool_rows(4, seed=0)  # save_tiny_tool_caller's default training rows start with these
    data = write_jsonl([{"prompt": r["prompt"]} for r in taught], tmp_path / "prompts.jsonl")
    args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "out.jsonl"),
                                      base_url=f"{server.url}/v1", tools="gad_trl.tiny:add", temperature=0.0,
                                      max_tokens=48, max_retries=1, request_timeout=120)
    summary = generate_teacher(args)
    out = read_jsonl(args.output) if summary["output"] else []
    assert summary["failed"] == 0, read_jsonl(args.errors_path)
    assert summary["answers_without_tool_calls"] == 0, [r["teacher_response"] for r in out]
    assert len(prepare_gad_dataset(Dataset.from_list(out))) == 4  # the trainer reads the trajectories
    for i, (row, expected) in enumerate(zip(out, taught)):
        trajectory = normalize_trajectory(row["teacher_response"], i, "teacher_response")
        assert [m["role"] for m in trajectory] == ["assistant", "tool", "assistant"], trajectory
        (call,) = trajectory[0]["tool_calls"]
        arguments = json.loads(call["function"]["arguments"])
        a, b = expected["teacher_response"][0]["tool_calls"][0]["function"]["arguments"].values()
        assert call["function"]["name"] == "add" and arguments == {"a": a, "b": b}
        assert trajectory[1]["content"] == str(a + b) and trajectory[1]["tool_call_id"] == call["id"]
        assert trajectory[2]["content"] == f"{a} plus {b} equals {a + b}"
        assert row["teacher_finish_reason"] == "stop"


def test_a_direct_answer_is_written_and_flagged(tmp_path):
    """A teacher that answers without calling a tool: a one-message trajectory, written, and counted in the summary;
    next to real trajectories the data layer reads it as a trajectory of its final turn alone."""
    from gad_trl.workflow.teacher import format_summary

    with FaultServer() as server:  # never calls tools
        args = make_args(tmp_path, server, n=2)
        summary = generate_teacher(args)
    assert summary["failed"] == 0 and summary["answers_without_tool_calls"] == 2
    assert [r["teacher_response"] for r in read_jsonl(args.output)] == [
        [{"role": "assistant", "content": f"ANSWER ADD {i} AND {i + 1}"}] for i in range(2)]
    assert "2 trajectory(ies) have no tool call" in format_summary(summary)
    from datasets import Dataset

    from gad_trl.data import prepare_gad_dataset
    from gad_trl.tiny import tiny_tool_rows

    rows = [{"prompt": [{"role": "user", "content": "add 1 and 2"}], **r} for r in read_jsonl(args.output)]
    prepared = prepare_gad_dataset(Dataset.from_list([*tiny_tool_rows(1), *[{k: r[k] for k in ("prompt",
                                                                              "teacher_response")} for r in rows]]))
    assert prepared[1]["teacher_response"] == [{"role": "assistant", "content": "ANSWER ADD 0 AND 1", "name": None,
                                                "tool_calls": None, "tool_call_id": None}]


def test_resume_refuses_switching_between_text_and_tools(tmp_path):
    with FaultServer(responder=per_prompt_script) as server:
        args = make_args(tmp_path, server, n=1, tools=None)
        server.responder = lambda messages: "plain answer"
        generate_teacher(args)
        with pytest.raises(ValueError, match="holds text answers; this run records tool trajectories"):
            generate_teacher(make_args(tmp_path, server, n=1))


def test_generate_teacher_cuts_huge_tool_results_with_the_same_setting():
    from gad_trl.workflow.teacher import TeacherGenerationArguments
    from gad_trl.workflow.tool_calling import DEFAULT_MAX_TOOL_RESULT_CHARS, run_tool_call

    call = {"function": {"name": "add", "arguments": '{"a": 2, "b": 0}'}}
    content = run_tool_call(call, {"add": hanging_add}, timeout=5, max_result_chars=100)
    assert content.startswith("x" * 100) and len(content) < 200 and "max_tool_result_chars=100" in content
    assert len(run_tool_call(call, {"add": hanging_add}, timeout=5)) < DEFAULT_MAX_TOOL_RESULT_CHARS + 100  # capped by default
    fields = TeacherGenerationArguments.__dataclass_fields__
    from gad_trl import GADConfig

    for name in ("tool_timeout", "max_tool_result_chars"):  # one name, one default, both commands
        assert fields[name].default == GADConfig.__dataclass_fields__[name].default

