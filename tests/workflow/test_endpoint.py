"""The black-box workflow against the suite's real vLLM server (CPU, tiny random model) through its OpenAI-compatible
API: the server plays the teacher, the student and the judge. A random model's reviews rarely start with a score
line: they must be counted as unparseable; with vLLM's structured outputs forcing the score line, every review
parses and the score follows from it."""

import json

import pytest

from gad_trl.workflow import judge as J
from gad_trl.workflow.evaluation import JUDGEMENTS_FILE, EvaluationArguments, evaluate
from gad_trl.tiny import tiny_gad_rows, write_jsonl

from tests.helpers.gad_helpers import read_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

# The tiny server's context is 512 tokens and the default review prompt takes ~480 of them: short answers.
SHORT = dict(student_max_tokens=6, reference_max_tokens=6, judge_max_tokens=8)


def test_generate_teacher_from_a_vllm_server_gives_a_training_set(vllm_server, tiny_model_dir, tmp_path, capsys):
    from datasets import Dataset

    from gad_trl.cli.main import main
    from gad_trl.data import prepare_gad_dataset

    rows = [{"prompt": r["prompt"]} for r in tiny_gad_rows(4, seed=1)]
    data = write_jsonl(rows, tmp_path / "prompts.jsonl")
    out = tmp_path / "train.parquet"
    argv = ["generate-teacher", "--dataset_name", data, "--output", str(out), "--base_url", f"{vllm_server.url}/v1",
            "--max_tokens", "8", "--tokenizer_name_or_path", tiny_model_dir]
    # Answers of whitespace alone (forced with vLLM's structured outputs, so this holds whatever weights earlier tests
    # loaded into the shared server): the trainer would reject such rows, so each is listed as failed (not written,
    # not dropped silently) and the exit status says so.
    blank = '{"min_tokens": 2, "structured_outputs": {"regex": "\\\\n{2,8}"}}'
    assert main([*argv, "--temperature", "0", "--extra_body", blank]) == 1
    errors = read_jsonl(str(out) + ".errors.jsonl")
    assert [e["row_id"] for e in sorted(errors, key=lambda e: e["row_id"])] == ["0", "1", "2", "3"]
    assert all("empty string" in e["error"] for e in errors) and not out.exists()
    capsys.readouterr()
    # Sampled answers are text: the re-run retries the failed rows and completes the data set.
    code = main([*argv, "--temperature", "1.0", "--seed", "0", "--extra_body", '{"min_tokens": 2}'])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    table = Dataset.from_parquet(str(out))
    assert table["row_id"] == ["0", "1", "2", "3"] and table["prompt"] == [r["prompt"] for r in rows]
    assert all(reason in ("stop", "length") for reason in table["teacher_finish_reason"])
    prepared = prepare_gad_dataset(table, tokenizer=None)  # the trainer's own validation accepts it
    # The written answers are the server's, unchanged: the same request (same seed) gives the same text.
    import openai

    client = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="EMPTY")
    for row in rows[:2]:
        again = client.chat.completions.create(model=vllm_server.model, messages=row["prompt"], max_tokens=8,
                                               temperature=1.0, seed=0, extra_body={"min_tokens": 2})
        assert again.choices[0].message.content == table["teacher_response"][rows.index(row)]
    assert len(prepared) == 4
    assert "Suggested max_completion_length" in stdout and "4/4 rows" in stdout


@pytest.mark.parametrize("forced_score_line", [False, True], ids=["free", "structured"])
def test_evaluate_with_the_vllm_server_as_student_and_judge(vllm_server, tmp_path, forced_score_line):
    rows = [{"prompt": r["prompt"]} for r in tiny_gad_rows(4, seed=2)]
    data = write_jsonl(rows, tmp_path / "eval.jsonl")
    extra = {"structured_outputs": {"regex": "(10|[1-9]) (10|[1-9])"}} if forced_score_line else None
    args = EvaluationArguments(
        dataset_name=data, output_dir=str(tmp_path / "eval"), student_base_url=f"{vllm_server.url}/v1",
        judge_base_url=f"{vllm_server.url}/v1", judge_extra_body=json.dumps(extra) if extra else None,
        max_retries=0, **SHORT,
    )  # fmt: skip
    summary = evaluate(args)
    assert summary["failed"] == 0 and summary["judged"] == 4
    records = read_jsonl(tmp_path / "eval" / JUDGEMENTS_FILE)
    parsed = [J.parse_ratings(r["review"]) for r in records]
    # the counts follow the parser on the real reviews, whatever they are
    assert summary["unparseable"] == sum(p is None for p in parsed)
    for record, ratings in zip(records, parsed):
        assert record["parseable"] == (ratings is not None)
        if ratings is not None:
            assert record["score"] == pytest.approx(J.relative_score(*ratings))
        assert 1 <= record["student_tokens"] <= SHORT["student_max_tokens"]
    assert summary["mean_student_tokens"] == pytest.approx(sum(r["student_tokens"] for r in records) / 4)
    if forced_score_line:
        assert summary["unparseable"] == 0
        scores = [J.relative_score(*p) for p in parsed]
        assert summary["score"]["mean"] == pytest.approx(sum(scores) / 4)
    else:
        assert summary["unparseable"] >= 1  # a random model does not follow the review format
