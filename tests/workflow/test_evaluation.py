"""`gad_trl.workflow.evaluation` (`gad-trl evaluate`): the judge protocol and the pairwise win rate, with local
OpenAI-compatible servers as student and judge (scripted reviews, so the scores are known)."""

import json
import statistics

import pytest

from gad_trl.workflow import judge as J
from gad_trl.workflow.evaluation import ERRORS_FILE, JUDGEMENTS_FILE, SUMMARY_FILE, EvaluationArguments, evaluate
from gad_trl.tiny import write_jsonl

from tests.helpers.fault_server import REVIEW, FaultServer, echo_upper, scripted_judge
from tests.helpers.gad_helpers import read_jsonl

pytestmark = pytest.mark.timeout(120)


def question_index(question):
    return int(question.rsplit(" ", 1)[1])


def rows(n, teacher=False):
    out = []
    for i in range(n):
        row = {"prompt": [{"role": "user", "content": f"question number {i}"}]}
        if teacher:
            row["teacher_response"] = f"TEACHER {i}"
        out.append(row)
    return out


def test_reference_protocol_scores_counts_and_resume(tmp_path):
    def review(question, answer_1, answer_2):
        i = question_index(question)
        if i == 4:
            return "Both answers are fine."  # unparseable: no score line
        return f"8 {i + 1}\nAssistant 2 is shorter."

    data = write_jsonl(rows(6), tmp_path / "eval.jsonl")
    with FaultServer(model="student") as student, FaultServer(scripted_judge(review), model="judge") as judge:
        judge.plan = {"question number 5": ["always500"]}  # its reference never comes: a failed row
        args = EvaluationArguments(dataset_name=data, output_dir=str(tmp_path / "eval"), student_base_url=student.url,
                                   judge_base_url=judge.url, max_retries=1, concurrency=2)
        summary = evaluate(args)

        expected = [100 * (i + 1) / (8 + i + 1) for i in range(4)]
        assert summary["score"]["mean"] == pytest.approx(statistics.mean(expected))
        half = 1.959964 * statistics.stdev(expected) / len(expected) ** 0.5
        assert summary["score"]["ci95_low"] == pytest.approx(statistics.mean(expected) - half, rel=1e-5)
        assert summary["score"]["ci95_high"] == pytest.approx(statistics.mean(expected) + half, rel=1e-5)
        assert (summary["rows"], summary["judged"], summary["unparseable"], summary["failed"]) == (6, 5, 1, 1)
        assert summary["mean_student_tokens"] == 4  # "ANSWER QUESTION NUMBER i": the server's completion_tokens
        assert summary["judge_model"] == "judge" and summary["mean_reference_rating"] == 8

        records = {r["row_id"]: r for r in read_jsonl(tmp_path / "eval" / JUDGEMENTS_FILE)}
        assert set(records) == {"0", "1", "2", "3", "4"}
        assert records["4"]["parseable"] is False and records["4"]["score"] is None
        assert records["2"]["review"].startswith("8 3") and records["2"]["score"] == pytest.approx(100 * 3 / 11)
        errors = read_jsonl(tmp_path / "eval" / ERRORS_FILE)
        assert [(e["row_id"], e["phase"]) for e in errors] == [("5", "reference")] and "500" in errors[0]["error"]
        assert json.loads((tmp_path / "eval" / SUMMARY_FILE).read_text())["score"] == summary["score"]

        # The judge saw the reference as Assistant 1 and the student as Assistant 2, greedy (temperature 0).
        reviews = [r for r in judge.requests if REVIEW.search(r["messages"][-1]["content"])]
        assert len(reviews) == 5
        for request in reviews:
            question, first, second = REVIEW.search(request["messages"][-1]["content"]).groups()
            assert first == "REFERENCE " + question and second == echo_upper([{"content": question}])
            assert request["messages"][0] == {"role": "system", "content": J.JUDGE_SYSTEM_PROMPT}
        assert all(r["temperature"] == 0 for r in student.requests + judge.requests)

        # Re-run: only the failed row is asked again (it still fails); the rest comes from the files.
        n_judge, n_student = len(judge.requests), len(student.requests)
        again = evaluate(args)
        assert again["score"] == summary["score"] and again["failed"] == 1
        assert len(student.requests) == n_student + 1
        # The same output_dir with another judge or mode is refused, not mixed in.
        with pytest.raises(ValueError, match="another judge_model"):
            evaluate(EvaluationArguments(dataset_name=data, output_dir=args.output_dir, student_base_url=student.url,
                                         judge_base_url=judge.url, judge_model="another-judge"))
        # Another student on the same prompts reuses the cached references: only reviews (and the failing one).
        args.output_dir = str(tmp_path / "eval2")
        args.reference_cache = str(tmp_path / "eval" / "judge_references.jsonl")
        n_judge = len(judge.requests)
        evaluate(args)
        new = judge.requests[n_judge:]
        assert sum(not REVIEW.search(r["messages"][-1]["content"]) for r in new) == 2  # row 5: 1 try + 1 retry


def test_pairwise_win_rate_counts_both_orders(tmp_path):
    def review(question, answer_1, answer_2):
        i = question_index(question)
        if i == 0:  # the student is better in both orders
            return "4 9" if answer_1.startswith("TEACHER") else "9 4"
        if i == 1:  # tie
            return "7 7"
        if i == 2:  # pure position bias: Assistant 1 always wins -> one win, one loss
            return "9 5"
        return "no idea"

    data = write_jsonl(rows(4, teacher=True), tmp_path / "eval.jsonl")
    with FaultServer() as student, FaultServer(scripted_judge(review)) as judge:
        args = EvaluationArguments(dataset_name=data, output_dir=str(tmp_path / "pw"), student_base_url=student.url,
                                   judge_base_url=judge.url, mode="pairwise", concurrency=2)
        summary = evaluate(args)
        # no reference answers in pairwise mode: every judge request is a review
        assert all(REVIEW.search(r["messages"][-1]["content"]) for r in judge.requests)
    assert summary["score"]["mean"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert summary["unparseable"] == 1 and summary["judged"] == 4
    records = {r["row_id"]: r for r in read_jsonl(tmp_path / "pw" / JUDGEMENTS_FILE)}
    assert records["2"]["ratings"] == [[9, 5], [9, 5]] and records["2"]["score"] == 0.5


def test_arguments_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="--judge_base_url is required"):
        EvaluationArguments(dataset_name="d.jsonl", output_dir="o", student_base_url="http://x")
    with pytest.raises(ValueError, match="not both"):
        EvaluationArguments(dataset_name="d.jsonl", output_dir="o", judge_base_url="http://j",
                            student_base_url="http://s", student_model_name_or_path="m")
    with pytest.raises(ValueError, match="No student"):
        evaluate(EvaluationArguments(dataset_name="d.jsonl", output_dir="o", judge_base_url="http://j"))
    with pytest.raises(ValueError, match="drop --student_model_name_or_path"):
        EvaluationArguments(dataset_name="d.jsonl", checkpoints_dir="run", judge_base_url="http://j",
                            student_base_url="http://s")
    template = tmp_path / "review.txt"
    template.write_text("Q: {question}\nA: {answer_1}\nRate it.")
    with pytest.raises(ValueError, match=r"missing \['\{answer_2\}'\]"):
        EvaluationArguments(dataset_name="d.jsonl", output_dir="o", judge_base_url="http://j",
                            student_base_url="http://s", judge_template_file=str(template))
