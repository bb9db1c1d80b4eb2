"""`gad-trl evaluate`: the judge protocol, pairwise win rate, per-checkpoint scores and the best-checkpoint rule, with
a local OpenAI-compatible server as student and judge (scripted reviews, so the scores are known) and the tiny model
as a local student."""

import json
import re
import statistics

import pytest

from gad_trl import judge as J
from gad_trl.checkpoint_selection import JudgeEvalCallback, evaluate_checkpoints, pick_best
from gad_trl.evaluation import (
    ERRORS_FILE,
    JUDGEMENTS_FILE,
    SUMMARY_FILE,
    EvaluationArguments,
    evaluate,
    summarize,
)
from gad_trl.testing import write_jsonl

from .fault_server import FaultServer, echo_upper

pytestmark = pytest.mark.timeout(120)

REVIEW = re.compile(r"\[Question\]\n(.*?)\n\n\[The Start of Assistant 1's Answer\]\n(.*?)\n\n"
                    r"\[The End of Assistant 1's Answer\]\n\n\[The Start of Assistant 2's Answer\]\n(.*?)\n\n"
                    r"\[The End", re.S)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def scripted_judge(review_for):
    """Judge server responder: reference answers are 'REFERENCE <question>', reviews come from `review_for`."""

    def respond(messages):
        match = REVIEW.search(messages[-1]["content"])
        if match is None:
            return "REFERENCE " + messages[-1]["content"]
        return review_for(*match.groups())

    return respond


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


def test_callback_refuses_a_sharded_student(tmp_path):
    from types import SimpleNamespace

    callback = JudgeEvalCallback(EvaluationArguments(dataset_name="d.jsonl", judge_base_url="http://j"))
    callback.on_train_begin(SimpleNamespace(fsdp=[], output_dir="run"), None, None)  # plain run: fine
    with pytest.raises(ValueError, match="--checkpoints_dir run"):
        callback.on_train_begin(SimpleNamespace(fsdp=["full_shard"], output_dir="run"), None, None)


def test_parse_ratings():
    assert J.parse_ratings("8 6\nbecause") == (8.0, 6.0)
    assert J.parse_ratings("\n 7.5, 9 \nx") == (7.5, 9.0)
    assert J.parse_ratings("Assistant 1: 8\nAssistant 2: 6") is None  # FastChat's rule: first line only
    assert J.parse_ratings("0 5") is None and J.parse_ratings("8 11") is None and J.parse_ratings("") is None
    assert J.relative_score(8, 8) == 50
    assert J.mean_ci95([50.0])["ci95_low"] is None


def test_callback_judges_the_saved_checkpoint_and_the_loop_resumes(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.cli.main import main
    from gad_trl.evaluation import local_answers
    from tests.gad_helpers import make_trainer

    data = write_jsonl(rows(3), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    ckpt = out / "checkpoint-1"
    with FaultServer(scripted_judge(lambda q, a1, a2: "5 5\nequal")) as judge:
        eval_args = EvaluationArguments(dataset_name=data, judge_base_url=judge.url, student_max_tokens=6)
        trainer = make_trainer(tiny_model_dir, out, max_steps=1, save_strategy="steps", save_steps=1)
        trainer.add_callback(JudgeEvalCallback(eval_args))
        trainer.train()
        summary = json.loads((ckpt / SUMMARY_FILE).read_text())
        assert summary["judged"] == 3 and summary["score"]["mean"] == 50 and summary["unparseable"] == 0
        records = read_jsonl(ckpt / JUDGEMENTS_FILE)
        assert all(1 <= r["student_tokens"] <= 6 for r in records)
        assert summary["mean_student_tokens"] == pytest.approx(sum(r["student_tokens"] for r in records) / 3)
        assert any(entry.get("eval_judge/score") == 50 for entry in trainer.state.log_history)
        # The callback judged the weights that were saved: their greedy answers, token for token.
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        saved = AutoModelForCausalLM.from_pretrained(ckpt)
        greedy = local_answers(saved, tokenizer, [r["prompt"] for r in rows(3)], 6, batch_size=1)
        assert [(r["student_answer"], r["student_tokens"]) for r in records] == [tuple(g) for g in greedy]
        trainer.model.train()
        local_answers(trainer.model, tokenizer, [rows(1)[0]["prompt"]], 2)
        assert trainer.model.training  # generation puts the model back in training mode
        # The reference answers are cached in output_dir for every later checkpoint.
        assert len(read_jsonl(out / "judge_references.jsonl")) == 3 and len(judge.requests) == 3 + 3

        # The CLI loop evaluates only the checkpoints without a summary, from disk, with the cached references.
        (ckpt / SUMMARY_FILE).unlink()
        (ckpt / JUDGEMENTS_FILE).unlink()
        eval_args.checkpoints_dir, eval_args.reference_cache = str(out), None
        (summary_again,) = evaluate_checkpoints(eval_args)
        assert main(["evaluate", "--dataset_name", data, "--judge_base_url", judge.url, "--checkpoints_dir", str(out),
                     "--student_max_tokens", "6"]) == 0  # complete: nothing re-asked, the table printed
        assert f"Best checkpoint: {ckpt}" in capsys.readouterr().out
        assert summary_again["student"] == str(ckpt.resolve()) and summary_again["score"] == summary["score"]
        assert len(judge.requests) == 3 + 3 + 3  # three more reviews, no new reference answer
        again = read_jsonl(ckpt / JUDGEMENTS_FILE)
        assert [r["student_answer"] for r in again] == [r["student_answer"] for r in records]
        assert evaluate_checkpoints(eval_args) == [summary_again] and len(judge.requests) == 9  # nothing left to do


def _write_summary(path, ratings, lengths, failed=0):
    records = [{"parseable": True, "score": J.relative_score(r, s), "reference_rating": r, "student_rating": s,
                "student_tokens": n} for (r, s), n in zip(ratings, lengths)]
    path.mkdir(parents=True)
    summary = summarize(records, "reference", len(records) + failed, failed)
    summary.update(student=str(path), judge_model="judge")  # as evaluate() writes it
    (path / SUMMARY_FILE).write_text(json.dumps(summary))


def test_pick_best_takes_the_highest_score_within_the_length_bound(tmp_path, capsys):
    from gad_trl.cli.main import main

    _write_summary(tmp_path / "checkpoint-10", [(6, 4), (5, 5)], [100, 120])  # score 45, length 110
    _write_summary(tmp_path / "checkpoint-20", [(4, 6), (3, 7)], [300, 320])  # score 65, length 310
    _write_summary(tmp_path / "checkpoint-30", [(5, 5), (4, 6)], [180, 200])  # score 55, length 190
    (tmp_path / "checkpoint-40").mkdir()  # not evaluated
    _write_summary(tmp_path / "checkpoint-50", [(1, 9)], [100], failed=1)  # score 90 on half the prompts
    best, table = pick_best(tmp_path)
    assert best.name == "checkpoint-20"
    best, table = pick_best(tmp_path, max_mean_length=200)
    assert best.name == "checkpoint-30" and [r["eligible"] for r in table] == [True, False, True, False, False]
    assert main(["evaluate", "--pick_best", str(tmp_path), "--max_mean_length", "200"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-30" in out.splitlines()[-1] and "not evaluated" in out and "1 rows failed: re-run" in out
    assert json.loads((tmp_path / "best_checkpoint.json").read_text())["best"].endswith("checkpoint-30")
    assert main(["evaluate", "--pick_best", str(tmp_path), "--max_mean_length", "50"]) == 1


def test_push_best_uploads_the_checkpoint_with_its_score(tmp_path, monkeypatch, capsys):
    """No Hub here: HfApi's two calls are recorded instead, to check what would be sent."""
    from huggingface_hub import HfApi

    from gad_trl.cli.main import main

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, **kwargs):
        calls["upload"] = kwargs

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    _write_summary(tmp_path / "checkpoint-10", [(6, 4), (5, 5)], [100, 120])
    _write_summary(tmp_path / "checkpoint-20", [(4, 6), (3, 7)], [300, 320])
    with pytest.raises(ValueError, match="hub_model_id"):
        main(["evaluate", "--pick_best", str(tmp_path), "--push_to_hub"])
    assert main(["evaluate", "--pick_best", str(tmp_path), "--push_to_hub", "--hub_model_id", "me/student"]) == 0
    assert calls["repo"] == "me/student"
    upload = calls["upload"]
    assert upload["folder_path"] == str(tmp_path / "checkpoint-20") and upload["repo_id"] == "me/student"
    assert "*.pt" in upload["ignore_patterns"] and JUDGEMENTS_FILE in upload["ignore_patterns"]
    card = (tmp_path / "checkpoint-20" / "README.md").read_text()
    assert "**65.00**" in card and "mean answer length: 310.0 tokens" in card

