"""`gad_trl.workflow.checkpoint_selection`: the callback that judges each saved checkpoint, the loop over a run's checkpoints,
the best-checkpoint rule and its push, with a local OpenAI-compatible judge and the tiny model as student."""

import json

import pytest

from gad_trl.workflow import judge as J
from gad_trl.workflow.checkpoint_selection import JudgeEvalCallback, evaluate_checkpoints, pick_best
from gad_trl.workflow.evaluation import JUDGEMENTS_FILE, SUMMARY_FILE, EvaluationArguments, summarize
from gad_trl.tiny import write_jsonl

from tests.helpers.fault_server import FaultServer, scripted_judge
from tests.helpers.gad_helpers import read_jsonl

pytestmark = pytest.mark.timeout(180)


def rows(n):
    return [{"prompt": [{"role": "user", "content": f"question number {i}"}]} for i in range(n)]


def test_callback_judges_the_saved_checkpoint_and_the_loop_resumes(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.cli.main import main
    from gad_trl.workflow.evaluation import local_answers
    from tests.helpers.gad_helpers import make_trainer

    data = write_jsonl(rows(3), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    ckpt = out / "checkpoint-1"
    with FaultServer(scripted_judge(lambda q, a1, a2: "5 5\nequal")) as judge:
        # discriminator_judge_samples=0: the judge score only, as before the reward-judge agreement (test_judge_auc.py)
        eval_args = EvaluationArguments(dataset_name=data, judge_base_url=judge.url, student_max_tokens=6,
                                        discriminator_judge_samples=0)
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


def test_callback_refuses_a_sharded_student(tmp_path):
    from types import SimpleNamespace

    callback = JudgeEvalCallback(EvaluationArguments(dataset_name="d.jsonl", judge_base_url="http://j"))
    callback.on_train_begin(SimpleNamespace(fsdp=[], output_dir="run"), None, None)  # plain run: fine
    with pytest.raises(ValueError, match="--checkpoints_dir run"):
        callback.on_train_begin(SimpleNamespace(fsdp=["full_shard"], output_dir="run"), None, None)


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


@pytest.mark.parametrize("command", ["gad", "seqkd"])
def test_training_commands_judge_each_checkpoint_with_judge_eval_config(command, tiny_model_dir, tiny_data_dir, tmp_path):
    """`--judge_eval_config eval.yaml` (a `gad-trl evaluate` YAML) adds JudgeEvalCallback to `gad-trl gad` / `seqkd`."""
    import importlib

    from gad_trl.cli import train as train_cli
    from tests.helpers.gad_helpers import TINY_GAD, TINY_SEQKD

    cli = importlib.import_module(f"gad_trl.cli.{command}")
    data = write_jsonl(rows(2), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    with FaultServer(scripted_judge(lambda q, a1, a2: "4 6\nbetter")) as judge:
        config = tmp_path / "judge.yaml"
        config.write_text(f"dataset_name: {data}\njudge_base_url: {judge.url}\nstudent_max_tokens: 4\n")
        common = ["--config", TINY_GAD if command == "gad" else TINY_SEQKD, "--model_name_or_path", tiny_model_dir,
                  "--dataset_name", tiny_data_dir, "--output_dir", str(out), "--max_steps", "1", "--report_to", "none",
                  "--disable_tqdm", "true"]
        trainer = cli.build_trainer(*train_cli.parse_args(
            common + ["--save_strategy", "steps", "--save_steps", "1", "--judge_eval_config", str(config)]
        ))
        trainer.train()
        summary = json.loads((out / "checkpoint-1" / SUMMARY_FILE).read_text())
        assert summary["judged"] == 2 and summary["score"]["mean"] == 60
        assert any(entry.get("eval_judge/score") == 60 for entry in trainer.state.log_history)
        # The reward-judge agreement: GAD only (a discriminator); this judge rates every answer alike, so no pair of
        # completions differs: 0 pairs logged, no AUC.
        (entry,) = [e for e in trainer.state.log_history if "eval_judge/score" in e]
        assert "eval/discriminator_judge_auc" not in entry
        assert entry.get("eval/discriminator_judge_pairs") == (0 if command == "gad" else None)
        assert ("discriminator_judge" in summary) == (command == "gad")

        with pytest.raises(ValueError, match="save_strategy is 'no'"):
            cli.build_trainer(*train_cli.parse_args(common + ["--judge_eval_config", str(config)]))
        config.write_text(f"dataset_name: {data}\n")
        with pytest.raises(ValueError, match="judge_base_url is required"):
            cli.build_trainer(*train_cli.parse_args(common + ["--save_strategy", "steps", "--judge_eval_config",
                                                              str(config)]))
