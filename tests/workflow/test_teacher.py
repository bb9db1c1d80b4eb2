"""`gad-trl generate-teacher` against a local fault-injecting OpenAI-compatible server: retries (429 + Retry-After,
500, hung request, malformed JSON, dropped connection), a total deadline per request attempt (a server trickling its
answer), failures listed not dropped, resume after `kill -9`."""

import os
import signal
import subprocess
import sys
import time

import pytest

from gad_trl.workflow.teacher import TeacherGenerationArguments, generate_teacher
from gad_trl.tiny import write_jsonl

from tests.helpers.fault_server import FaultServer, echo_upper
from tests.helpers.gad_helpers import read_jsonl

pytestmark = pytest.mark.timeout(120)


def prompts(n):
    return [{"prompt": [{"role": "user", "content": f"question number {i}"}]} for i in range(n)]


def make_args(tmp_path, server, n=4, output="out.jsonl", **kw):
    data = write_jsonl(prompts(n), tmp_path / "prompts.jsonl")
    kw.setdefault("max_retries", 2)
    kw.setdefault("request_timeout", 5.0)
    return TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / output), base_url=server.url,
                                      concurrency=2, **kw)


def test_faults_are_retried_and_rows_come_back_once_in_order(tmp_path):
    with FaultServer(hang_seconds=3.0) as server:
        server.plan = {
            "question number 0": ["429"], "question number 1": ["500", "drop"],
            "question number 2": ["malformed"], "question number 3": ["hang"],
        }  # fmt: skip
        args = make_args(tmp_path, server, n=5, request_timeout=1.0)
        start = time.monotonic()
        summary = generate_teacher(args)
        elapsed = time.monotonic() - start

    assert summary["failed"] == 0 and summary["done"] == 5 and summary["output"] == args.output
    rows = read_jsonl(args.output)
    assert [r["row_id"] for r in rows] == ["0", "1", "2", "3", "4"]  # input order after the run
    for r in rows:
        assert r["teacher_response"] == echo_upper(r["prompt"]) and r["teacher_finish_reason"] == "stop"
    assert server.faults_for("question number 0") == ["429", "ok"]
    assert server.faults_for("question number 1") == ["500", "drop", "ok"]
    assert server.faults_for("question number 2") == ["malformed", "ok"]
    assert server.faults_for("question number 3") == ["hang", "ok"]
    # Retry-After: 1 was honoured: the retry of row 0 came at least 1 s after the 429.
    times = [t for t, p, _ in server.log if p == "question number 0"]
    assert times[1] - times[0] >= 0.95
    # The hung request was abandoned at the 1 s timeout, not after the server's 3 s.
    hang_times = [t for t, p, _ in server.log if p == "question number 3"]
    assert 0.95 <= hang_times[1] - hang_times[0] < 2.9
    assert elapsed < 10
    assert read_jsonl(args.errors_path) == []


def test_request_timeout_is_a_total_deadline_per_attempt(tmp_path):
    """A server that sends its headers, then one byte every 0.3 s, answers every socket read in time (before the fix
    the request lived until the server stopped: ~60 s here). --request_timeout 1.5 ends each attempt after 1.5 s,
    closes its connection, retries it like any timeout, and lists the row that still fails."""
    with FaultServer(trickle_interval=0.3, trickle_seconds=60.0) as server:
        server.plan = {"question number 1": ["trickle", "trickle"], "question number 2": ["trickle"]}
        args = make_args(tmp_path, server, n=4, request_timeout=1.5, max_retries=1)
        start = time.monotonic()
        summary = generate_teacher(args)
        elapsed = time.monotonic() - start
        # The server sees each abandoned connection closed (its next byte fails) - nothing keeps reading it.
        while len(server.trickle_ends) < 3 and time.monotonic() - start < 30:
            time.sleep(0.1)
        ends = list(server.trickle_ends)

    # 2 attempts of 1.5 s + a backoff of at most 0.5 s; generous for a loaded machine, far below the server's 60 s.
    assert elapsed < 15, elapsed
    assert summary["failed"] == 1 and summary["failed_ids"] == ["1"] and summary["done"] == 3
    errors = {e["row_id"]: e["error"] for e in read_jsonl(args.errors_path)}
    assert set(errors) == {"1"} and "APITimeoutError" in errors["1"], errors
    assert server.faults_for("question number 1") == ["trickle", "trickle"]  # 1 try + 1 retry
    assert server.faults_for("question number 2") == ["trickle", "ok"]  # the retry answered
    times = [t for t, p, _ in server.log if p == "question number 1"]
    assert 1.4 <= times[1] - times[0] < 8  # the retry came after the 1.5 s deadline (+ backoff), not at the end
    assert [outcome for _, outcome in ends] == ["client closed"] * 3
    assert max(t for t, _ in ends) - start < 20


def test_request_timeout_without_retries_ends_a_trickling_request(tmp_path):
    with FaultServer(trickle_interval=0.3, trickle_seconds=60.0) as server:
        server.plan = {"question number 0": ["trickle"]}
        args = make_args(tmp_path, server, n=1, request_timeout=1.5, max_retries=0)
        start = time.monotonic()
        summary = generate_teacher(args)
        elapsed = time.monotonic() - start
    assert elapsed < 6, elapsed
    assert summary["failed"] == 1
    assert "APITimeoutError" in read_jsonl(args.errors_path)[0]["error"]


def test_failed_rows_are_listed_then_retried_by_a_rerun(tmp_path, capsys, caplog, monkeypatch):
    from gad_trl.cli.main import main

    secret = "sk-test-0123456789-secret"
    monkeypatch.setenv("TEACHER_KEY", secret)
    with FaultServer(retry_after="1000") as server:  # a Retry-After over the client's 120 s cap is not waited for
        server.plan = {"question number 1": ["always500"], "question number 2": ["400"],
                       "question number 3": ["malformed"] * 3, "question number 4": ["429"]}
        args = make_args(tmp_path, server, n=5, output="out.parquet")
        argv = ["generate-teacher", "--dataset_name", args.dataset_name, "--output", args.output,
                "--base_url", server.url, "--max_retries", "2", "--concurrency", "2", "--api_key_env", "TEACHER_KEY"]
        assert main(argv) == 1
        out = capsys.readouterr().out
        errors = {e["row_id"]: e["error"] for e in read_jsonl(args.errors_path)}
        assert set(errors) == {"1", "2", "3", "4"}
        assert "500" in errors["1"] and "400" in errors["2"] and "malformed" in errors["3"] and "429" in errors["4"]
        assert server.faults_for("question number 1") == ["always500"] * 3  # 1 try + 2 retries
        assert server.faults_for("question number 2") == ["400"]  # a 400 is not retried
        assert server.faults_for("question number 4") == ["429"]
        assert "4 row(s) failed" in out and str(args.errors_path) in out
        assert not os.path.exists(args.output)  # no Parquet with missing rows
        assert [r["row_id"] for r in read_jsonl(args.progress_path)] == ["0"]

        server.plan = {}
        assert main(argv) == 0
    from datasets import Dataset

    table = Dataset.from_parquet(args.output)
    assert table["row_id"] == ["0", "1", "2", "3", "4"]
    assert table["teacher_response"] == [echo_upper(p["prompt"]) for p in prompts(5)]
    assert read_jsonl(args.errors_path) == [] and not args.progress_path.exists()
    # Only the failed rows were asked again.
    assert server.faults_for("question number 0") == ["ok"]
    # The key from $TEACHER_KEY was sent, and appears in no output file, log record or printed line.
    assert set(server.authorizations) == {f"Bearer {secret}"}
    for path in tmp_path.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text and secret not in capsys.readouterr().out


def test_commands_explain_themselves(capsys):
    from gad_trl.cli.main import main

    for command, flag in (("generate-teacher", "--api_key_env"), ("evaluate", "--max_mean_length")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and flag in capsys.readouterr().out
    with pytest.raises(ValueError, match="--output 'out.csv': use a .jsonl or .parquet file"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="out.csv")
    with pytest.raises(ValueError, match="--extra_body is not valid JSON"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="o.jsonl", extra_body="{top_k: 2}")


def test_request_timeout_help_says_it_is_a_total_per_attempt(capsys):
    from gad_trl.cli.main import main

    for command in ("generate-teacher", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "Total seconds one request attempt may take" in text, command
    with pytest.raises(ValueError, match="--request_timeout must be > 0"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="o.jsonl", request_timeout=0)


def test_output_of_another_data_set_is_refused(tmp_path):
    with FaultServer() as server:
        args = make_args(tmp_path, server, n=3)
        generate_teacher(args)
        write_jsonl([{"prompt": "something else"}] * 3, tmp_path / "prompts.jsonl")
        with pytest.raises(ValueError, match="different prompt"):
            generate_teacher(args)


def kill_9_once_written(cmd, env, watched, lines: int, log) -> None:
    """Start `cmd` and SIGKILL it once `watched` holds `lines` lines (within 60 s; it must still be running)."""
    with open(log, "wb") as stderr:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if watched.exists() and watched.read_text().count("\n") >= lines:
                break
            time.sleep(0.02)
        assert proc.poll() is None, log.read_text()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_kill_9_mid_run_then_resume_gives_every_row_once(tmp_path):
    n = 40
    with FaultServer(delay=0.05) as server:
        data = write_jsonl(prompts(n), tmp_path / "prompts.jsonl")
        out = tmp_path / "out.jsonl"
        cmd = [sys.executable, "-m", "gad_trl.cli.main", "generate-teacher", "--dataset_name", data, "--output",
               str(out), "--base_url", server.url, "--concurrency", "2"]
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        kill_9_once_written(cmd, env, out, 10, tmp_path / "first_run.log")
        done_before = out.read_text().count("\n")
        assert 10 <= done_before < n
        # A kill can tear the line being written; make sure the resume meets one.
        with open(out, "a") as f:
            f.write('{"row_id": "39", "prompt": [{"role": "us')

        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(out)
    assert [r["row_id"] for r in rows] == [str(i) for i in range(n)]
    assert all(r["teacher_response"] == echo_upper(r["prompt"]) for r in rows)
    # The rerun asked only for what was missing (plus at most the rows in flight at the kill).
    asked = [p for _, p, _ in server.log]
    assert len(asked) <= n + 2 and len(set(asked)) == n
    assert f"{done_before} from an earlier run" in result.stdout


def test_push_to_hub_sends_the_finished_data_set_only(tmp_path, monkeypatch):
    """No Hub here: `Dataset.push_to_hub` is recorded instead, to check what would be sent and when."""
    from datasets import Dataset

    pushed = []
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, kw, self[:])))
    with pytest.raises(ValueError, match="hub_dataset_id"):
        TeacherGenerationArguments(dataset_name="x.jsonl", output="o.jsonl", push_to_hub=True)
    with FaultServer() as server:
        server.plan = {"question number 1": ["400"]}
        args = make_args(tmp_path, server, n=3, push_to_hub=True, hub_dataset_id="me/answers", hub_private=True)
        assert generate_teacher(args)["failed"] == 1 and pushed == []  # incomplete: nothing pushed
        summary = generate_teacher(args)
    assert summary["pushed_to"] == "me/answers"
    ((repo_id, kwargs, table),) = pushed
    assert repo_id == "me/answers" and kwargs == {"private": True}
    assert table["row_id"] == ["0", "1", "2"] and table["teacher_response"][1] == "ANSWER QUESTION NUMBER 1"


@pytest.mark.parametrize("fmt", ["verl", "standard"])
def test_prompt_formats_and_system_prompt(tmp_path, fmt):
    """verl `content` rows and plain-text prompts are read as the trainer reads them; the system prompt reaches the
    teacher only, and the rows keep their prompt column untouched."""
    from gad_trl.data import prepare_gad_dataset
    from gad_trl.tiny import tiny_gad_rows

    rows = [{k: v for k, v in r.items() if k != "teacher_response"} for r in tiny_gad_rows(3, seed=0, fmt=fmt)]
    column = "content" if fmt == "verl" else "prompt"
    data = write_jsonl(rows, tmp_path / "prompts.jsonl")
    with FaultServer() as server:
        args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "out.jsonl"), base_url=server.url,
                                          system_prompt="Answer briefly.", temperature=0.5, max_tokens=32)
        assert generate_teacher(args)["done"] == 3
    for request in server.requests:
        assert request["messages"][0] == {"role": "system", "content": "Answer briefly."}
        assert request["messages"][1]["role"] == "user" and len(request["messages"]) == 2
        assert request["temperature"] == 0.5 and request["max_tokens"] == 32 and "top_p" not in request
    out = read_jsonl(args.output)
    assert [r[column] for r in out] == [r[column] for r in rows]
    from datasets import Dataset

    assert len(prepare_gad_dataset(Dataset.from_list(out))) == 3


# --num_answers k: k answers per prompt, through the API's `n` or one request per answer.


def sample(prompt, s):
    """The fault server's answer for a request with seed `s` (one choice)."""
    return echo_upper([{"role": "user", "content": prompt}]) + f" (sample {s})"


def test_num_answers_one_request_with_n(tmp_path, capsys):
    from gad_trl.data import normalize_teacher_responses

    with FaultServer(n_mode="support") as server:
        args = make_args(tmp_path, server, n=3, num_answers=3, seed=10)
        summary = generate_teacher(args)
    assert summary["failed"] == 0 and summary["done"] == 3 and summary["answers_per_row"] == 3
    rows = read_jsonl(args.output)
    for i, r in enumerate(rows):
        prompt = f"question number {i}"
        assert r["teacher_response"] == [sample(prompt, 10 + j) for j in range(3)]
        assert r["teacher_finish_reason"] == ["stop"] * 3
        assert normalize_teacher_responses(r["teacher_response"], i, "teacher_response") == r["teacher_response"]
    assert len(server.requests) == 3 and all(q["n"] == 3 and q["seed"] == 10 for q in server.requests)
    assert not args.answers_path.exists()  # removed once the data set is complete
    assert "9/9" in capsys.readouterr().err  # the bar counts answers


def test_num_answers_one_keeps_todays_requests_and_output(tmp_path):
    with FaultServer() as server:
        args = make_args(tmp_path, server, n=2, num_answers=1, seed=3)
        summary = generate_teacher(args)
    assert "answers_per_row" not in summary
    assert all("n" not in q and q["seed"] == 3 for q in server.requests)
    assert [r["teacher_response"] for r in read_jsonl(args.output)] == [sample(f"question number {i}", 3)
                                                                       for i in range(2)]
    assert not args.answers_path.exists()


@pytest.mark.parametrize("n_mode", ["ignore", "reject"])
def test_num_answers_falls_back_to_one_request_per_answer(tmp_path, caplog, n_mode):
    import logging

    caplog.set_level(logging.WARNING, logger="gad_trl.workflow.teacher")
    with FaultServer(n_mode=n_mode) as server:
        args = make_args(tmp_path, server, n=4, num_answers=3, seed=0)
        summary = generate_teacher(args)
    assert summary["failed"] == 0 and summary["done"] == 4
    for i, r in enumerate(read_jsonl(args.output)):
        assert r["teacher_response"] == [sample(f"question number {i}", j) for j in range(3)]
    # After the endpoint showed it lacks `n` (at most `concurrency` rows asked with it first), one request per answer.
    with_n = [q for q in server.requests if q.get("n")]
    assert 1 <= len(with_n) <= args.concurrency
    singles = [q for q in server.requests if not q.get("n")]
    assert sorted(q["seed"] for q in singles).count(1) == 4  # distinct seeds: answer j asks with seed + j
    notes = [r.message for r in caplog.records if "one request per missing answer" in r.message]
    assert len(notes) == 1, notes  # said once
    assert ("ignores `n`" if n_mode == "ignore" else "refused a request with n=3") in notes[0]


def test_num_answers_resume_asks_only_for_the_missing_answers(tmp_path):
    """An empty choice and a failed request leave rows with some answers: they are kept (answers file), listed per
    (row, answer index), the row is not written; the rerun asks only for the missing answers."""
    with FaultServer(n_mode="support") as server:
        server.plan = {"question number 1": ["emptychoice"], "question number 2": ["always500"]}
        args = make_args(tmp_path, server, n=3, num_answers=3, seed=0, max_retries=0)
        summary = generate_teacher(args)
        assert summary["failed"] == 2 and sorted(summary["failed_ids"]) == ["1", "2"]
        assert summary["failed_answers"] == 4 and summary["output"] is None
        errors = read_jsonl(args.errors_path)
        by_answer = {(e["row_id"], e["answer_index"]): e["error"] for e in errors}
        assert set(by_answer) == {("1", 2), ("2", 0), ("2", 1), ("2", 2)}
        assert "Row 1: column 'teacher_response' answer 2 is an empty string" in by_answer[("1", 2)]
        assert "500" in by_answer[("2", 0)]
        assert [r["row_id"] for r in read_jsonl(args.progress_path)] == ["0"]  # only complete rows
        kept = read_jsonl(args.answers_path)
        assert sorted((a["row"], a["answer_index"]) for a in kept) == [("0", 0), ("0", 1), ("0", 2), ("1", 0),
                                                                      ("1", 1)]
        before = len(server.requests)
        server.plan = {}
        summary = generate_teacher(args)
        again = server.requests[before:]
    assert summary["failed"] == 0 and summary["output"] == args.output
    # Row 1: only answer 2 (one request, its own seed); row 2: its three answers in one request with n.
    asked = sorted((q["messages"][-1]["content"], q.get("n"), q["seed"]) for q in again)
    assert asked == [("question number 1", None, 2), ("question number 2", 3, 0)]
    rows = read_jsonl(args.output)
    for i, r in enumerate(rows):
        assert r["teacher_response"] == [sample(f"question number {i}", j) for j in range(3)]
    assert not args.answers_path.exists() and read_jsonl(args.errors_path) == []


def test_num_answers_resume_refuses_another_k_and_validates(tmp_path):
    with FaultServer() as server:
        args = make_args(tmp_path, server, n=2, num_answers=2)
        generate_teacher(args)
        with pytest.raises(ValueError, match="holds 2 teacher answer.*--num_answers 3"):
            generate_teacher(make_args(tmp_path, server, n=2, num_answers=3))
    with pytest.raises(ValueError, match="--num_answers must be >= 1"):
        TeacherGenerationArguments(dataset_name="p.jsonl", output="o.jsonl", num_answers=0)


def test_num_answers_kill_9_then_resume_keeps_received_answers(tmp_path):
    """One request per answer (n ignored), killed mid-run: the rerun asks only for the answers not yet stored."""
    n, k = 12, 3
    with FaultServer(delay=0.05, n_mode="ignore") as server:
        data = write_jsonl(prompts(n), tmp_path / "prompts.jsonl")
        out = tmp_path / "out.jsonl"
        answers = tmp_path / "out.jsonl.answers.jsonl"
        cmd = [sys.executable, "-m", "gad_trl.cli.main", "generate-teacher", "--dataset_name", data, "--output",
               str(out), "--base_url", server.url, "--concurrency", "2", "--num_answers", str(k), "--seed", "5"]
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        kill_9_once_written(cmd, env, answers, 10, tmp_path / "first_run.log")
        first = len(server.requests)
        stored = {(a["row"], a["answer_index"]) for a in read_jsonl(answers)}
        assert len(stored) >= 10
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr[-3000:]
        rerun = server.requests[first:]
    rows = read_jsonl(out)
    assert [r["row_id"] for r in rows] == [str(i) for i in range(n)]
    for i, r in enumerate(rows):
        assert r["teacher_response"] == [sample(f"question number {i}", 5 + j) for j in range(k)]
    asked = {(q["messages"][-1]["content"].split()[-1], q["seed"] - 5) for q in rerun}
    assert all((row, j) not in stored for row, j in asked)  # nothing already stored was asked again
    assert not answers.exists()


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_num_answers_from_a_real_vllm_server_uses_n(vllm_server, tmp_path):
    """vLLM honours `n`: one request per prompt gives its k answers, and answer j is the sample one request with
    seed + j gives (vLLM seeds its n samples so) - what a fallback or resumed answer asks for."""
    import openai
    from datasets import Dataset

    from gad_trl.data import prepare_gad_dataset
    from gad_trl.tiny import tiny_gad_rows

    rows = [{"prompt": r["prompt"]} for r in tiny_gad_rows(3, seed=2)]
    data = write_jsonl(rows, tmp_path / "prompts.jsonl")
    before = vllm_server.count_requests("/v1/chat/completions")
    args = TeacherGenerationArguments(dataset_name=data, output=str(tmp_path / "train.jsonl"),
                                      base_url=f"{vllm_server.url}/v1", num_answers=3, temperature=1.0, seed=0,
                                      max_tokens=8, extra_body='{"min_tokens": 2}')
    summary = generate_teacher(args)
    assert summary["failed"] == 0, read_jsonl(args.errors_path)
    assert vllm_server.count_requests("/v1/chat/completions") - before == 3  # one request (n=3) per prompt
    out = read_jsonl(args.output)
    assert all(len(r["teacher_response"]) == 3 and len(r["teacher_finish_reason"]) == 3 for r in out)
    assert len(prepare_gad_dataset(Dataset.from_list(out))) == 3
    client = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="EMPTY")
    for row, written in zip(rows[:2], out[:2]):
        for j in range(3):
            again = client.chat.completions.create(model=vllm_server.model, messages=row["prompt"], max_tokens=8,
                                                   temperature=1.0, seed=j, extra_body={"min_tokens": 2})
            assert again.choices[0].message.content == written["teacher_response"][j], j
