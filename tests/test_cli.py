"""`gad-trl` command line: dispatch, TrlParser/YAML parsing, data loading, SeqKD conversion, accelerate launch,
analyze-lengths, eval-discriminator and end-to-end `train` runs of both stages on the tiny model (offline, CPU)."""

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

import gad_trl.cli.main as cli_main
from gad_trl.cli import train as train_cli
from gad_trl.cli.utils import filter_long_prompts, load_any_dataset, to_seqkd_dataset
from gad_trl.data import GADDataError
from gad_trl.testing import tiny_gad_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY_GAD = str(REPO / "recipes" / "tiny" / "gad.yaml")
TINY_SEQKD = str(REPO / "recipes" / "tiny" / "seqkd.yaml")


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
    """A data folder as `gad-trl make-tiny` writes it: train.jsonl + test.jsonl."""
    root = tmp_path_factory.mktemp("tiny-data")
    rows = tiny_gad_rows(40, seed=1)
    write_jsonl(rows[:32], root / "train.jsonl")
    write_jsonl(rows[32:], root / "test.jsonl")
    return str(root)


# ------------------------------------------------------------------------------------------------ dispatch


def test_help_lists_every_command(capsys):
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "analyze-lengths", "eval-discriminator", "make-tiny", "vllm-serve"):
        assert command in out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as err:
        cli_main.main(["distill-everything"])
    assert err.value.code != 0


def test_console_script_is_declared():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["gad-trl"] == "gad_trl.cli.main:main"


def test_vllm_serve_delegates_to_gad_trl_vllm(monkeypatch):
    seen = []
    fake = types.ModuleType("gad_trl.vllm")
    fake.serve_main = lambda argv: seen.append(list(argv)) or 0
    monkeypatch.setitem(sys.modules, "gad_trl.vllm", fake)
    assert cli_main.main(["vllm-serve", "--model", "m", "--port", "8123"]) == 0
    assert seen == [["--model", "m", "--port", "8123"]]


def test_vllm_serve_without_server_fails_clearly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gad_trl.vllm", types.ModuleType("gad_trl.vllm"))  # no serve_main
    assert cli_main.main(["vllm-serve", "--model", "m"]) == 2
    assert "vllm-serve" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ parsing


def test_flags_override_yaml_and_yaml_overrides_defaults():
    script_args, args, model_args = train_cli.parse_args(
        ["--config", TINY_GAD, "--learning_rate", "0.5", "--critic_warmup_steps", "7"]
    )
    assert type(args).__name__ == "GADConfig" and script_args.stage == "gad"
    assert args.learning_rate == 0.5 and args.critic_warmup_steps == 7  # flags
    assert args.num_generations == 4 and args.max_completion_length == 16  # YAML
    assert args.discriminator_loss_type == "bradley_terry" and model_args.model_name_or_path == "outputs/tiny/model"


def test_stage_picks_the_config_class(tmp_path):
    _, args, _ = train_cli.parse_args(["--config", TINY_SEQKD])
    assert type(args).__name__ == "SeqKDConfig" and args.teacher_response_column == "teacher_response"
    assert train_cli.peek_stage(["--config", TINY_SEQKD]) == "seqkd"
    assert train_cli.peek_stage(["--config", TINY_SEQKD, "--stage", "gad"]) == "gad"  # flag wins
    assert train_cli.peek_stage(["--stage=seqkd"]) == "seqkd"
    assert train_cli.peek_stage([]) == "gad"
    with pytest.raises(ValueError, match="Unknown stage"):
        train_cli.peek_stage(["--stage", "ppo"])


def test_unknown_yaml_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY_GAD).read_text() + "\nnum_generationz: 3\n")
    with pytest.raises(ValueError, match="num_generationz"):
        train_cli.parse_args(["--config", str(bad)])


def test_seqkd_rejects_gad_only_fields(tmp_path):
    """A GAD field in a SeqKD YAML is an error, not silently ignored."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY_SEQKD).read_text() + "\ncritic_warmup_steps: 3\n")
    with pytest.raises(ValueError, match="critic_warmup_steps"):
        train_cli.parse_args(["--config", str(bad)])


# ------------------------------------------------------------------------------------------------ data


def test_load_any_dataset_from_files_and_folders(tmp_path):
    rows = tiny_gad_rows(6, seed=2, fmt="verl")
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    Dataset.from_list(rows[:2]).to_parquet(str(tmp_path / "test.parquet"))
    write_jsonl(rows, tmp_path / "rows.jsonl")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:3])}).save_to_disk(
        str(tmp_path / "saved_dict")
    )

    for name in ("train.parquet", "rows.jsonl", "rows.json", "saved"):
        ds = load_any_dataset(str(tmp_path / name))
        assert list(ds) == ["train"] and len(ds["train"]) == 6, name
        assert ds["train"][0]["content"] == rows[0]["content"], name
    both = load_any_dataset(str(tmp_path / "{split}.parquet"))
    assert sorted(both) == ["test", "train"] and len(both["test"]) == 2
    assert len(load_any_dataset(str(tmp_path / "saved_dict"))["test"]) == 3
    with pytest.raises(FileNotFoundError):
        load_any_dataset(str(tmp_path / "missing.parquet"))


@pytest.mark.parametrize("fmt", ["conversational", "verl", "standard"])
def test_seqkd_conversion_to_prompt_completion(fmt):
    rows = tiny_gad_rows(3, seed=3, fmt=fmt)
    converted = to_seqkd_dataset(Dataset.from_list(rows))
    assert converted.column_names == ["prompt", "completion"]
    for row, out in zip(rows, converted):
        source = row.get("prompt", row.get("content"))
        expected_prompt = [{"role": "user", "content": source}] if isinstance(source, str) else source
        assert out["prompt"] == expected_prompt
        assert out["completion"] == [{"role": "assistant", "content": row["teacher_response"]}]


def test_seqkd_conversion_names_the_bad_row():
    rows = tiny_gad_rows(3, seed=3)
    rows[2]["teacher_response"] = "   "
    with pytest.raises(GADDataError, match=r"Row 2.*teacher_response"):
        to_seqkd_dataset(Dataset.from_list(rows))


def test_filter_long_prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = {"prompt": [{"role": "user", "content": "hello"}], "teacher_response": "HELLO"}
    long = {"prompt": [{"role": "user", "content": " ".join(["hello"] * 50)}], "teacher_response": "HELLO"}
    kept = filter_long_prompts(Dataset.from_list([short, long, short]), tokenizer, 20)
    assert len(kept) == 2 and all(r["prompt"] == short["prompt"] for r in kept)
    with pytest.raises(ValueError, match="Every prompt"):
        filter_long_prompts(Dataset.from_list([long]), tokenizer, 5)


# ------------------------------------------------------------------------------------------------ accelerate


def test_accelerate_config_name_relaunches_through_accelerate():
    argv = ["--config", TINY_GAD, "--accelerate_config", "zero3", "--num_processes", "2", "--max_steps", "3"]
    launch_args, training_args = train_cli.split_launch_args(argv)
    assert launch_args[:2] == ["--config_file", str(REPO / "gad_trl" / "accelerate_configs" / "zero3.yaml")]
    assert launch_args[2:] == ["--num_processes", "2"]
    assert training_args == ["--config", TINY_GAD, "--max_steps", "3"]

    launched = []
    assert train_cli.launch(argv, launch_command_fn=launched.append) == 0
    ns = launched[0]
    assert ns.config_file.endswith("zero3.yaml") and ns.num_processes == 2
    assert ns.module and ns.training_script == "gad_trl.cli.train"
    assert ns.training_script_args == training_args


def test_misspelt_flag_is_reported_not_launched(monkeypatch):
    launched = []
    monkeypatch.setattr(train_cli, "launch", lambda argv, **kw: launched.append(argv) or 0)
    with pytest.raises(ValueError, match=r"--num_generationz"):
        train_cli.run(["--config", TINY_GAD, "--num_generationz", "3"])
    assert not launched
    assert train_cli.run(["--config", TINY_GAD, "--num_processes", "2"]) == 0  # a real accelerate option
    assert launched == [["--config", TINY_GAD, "--num_processes", "2"]]


def test_plain_command_line_has_no_launch_args():
    assert train_cli.split_launch_args(["--config", TINY_GAD, "--max_steps", "2"]) == (
        [],
        ["--config", TINY_GAD, "--max_steps", "2"],
    )
    with pytest.raises(ValueError, match="neither a file nor"):
        train_cli.resolve_accelerate_config("no-such-config")


# ------------------------------------------------------------------------------------------------ make-tiny


def test_make_tiny_writes_a_loadable_model_and_data(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli_main.main(["make-tiny", str(tmp_path / "tiny"), "--num_train", "5", "--num_test", "3"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny" / "model")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.chat_template
    data = load_any_dataset(str(tmp_path / "tiny" / "data"))
    assert len(data["train"]) == 5 and len(data["test"]) == 3
    assert set(data["train"].column_names) == {"prompt", "teacher_response"}


# ------------------------------------------------------------------------------------------------ analyze-lengths


def test_percentile_matches_numpy():
    import numpy as np

    from gad_trl.cli.analyze_lengths import percentile, suggest_max_length

    values = [3, 17, 5, 9, 1, 40, 22, 8]
    for q in (0, 25, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert suggest_max_length(values, 99, 64) == 64
    assert suggest_max_length([100, 130, 700], 50, 64) == 192  # p50 = 130 -> 3 x 64


def test_analyze_lengths_counts_teacher_tokens_with_eos(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from gad_trl.cli.analyze_lengths import percentile

    out_json = tmp_path / "lengths.json"
    argv = ["analyze-lengths", "--model_name_or_path", tiny_model_dir, "--dataset_name",
            str(Path(tiny_data_dir) / "train.jsonl"), "--round_to", "4", "--output_json", str(out_json)]
    assert cli_main.main(argv) == 0
    assert "Suggested max_completion_length" in capsys.readouterr().out
    report = json.loads(out_json.read_text())

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (Path(tiny_data_dir) / "train.jsonl").read_text().splitlines()]
    expected = [len(tokenizer(r["teacher_response"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
    stats = report["teacher_response_tokens"]
    assert stats["count"] == len(rows) and stats["max"] == max(expected) and stats["min"] == min(expected)
    assert stats["p95"] == pytest.approx(percentile(expected, 95))
    assert report["suggested_max_completion_length"] == 4 * math.ceil(percentile(expected, 99) / 4)
    assert report["prompt_tokens"]["min"] > 0


# ------------------------------------------------------------------------------------------------ eval-discriminator


@pytest.fixture(scope="module")
def tiny_discriminator(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("disc")
    torch.manual_seed(0)
    disc = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    disc.config.pad_token_id = tokenizer.pad_token_id
    disc.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_scores_are_taken_at_the_last_token(tiny_discriminator):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.data import encode_pair
    from gad_trl.discriminator import score_sequences

    def last_token_scores(model, sequences, pad_token_id, batch_size=8):
        with torch.no_grad():
            return score_sequences(model, sequences, pad_token_id, "cpu", batch_size).tolist()

    disc = AutoModelForSequenceClassification.from_pretrained(tiny_discriminator, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_discriminator)
    prompt = [{"role": "user", "content": "write sum plus"}]
    seqs = [encode_pair(tokenizer, prompt, "SUM PLUS"), encode_pair(tokenizer, prompt, "SUM"),
            encode_pair(tokenizer, prompt, "SUM PLUS two", finished=False)]
    assert seqs[0][-1] == tokenizer.eos_token_id and seqs[2][-1] != tokenizer.eos_token_id
    batched = last_token_scores(disc, seqs, tokenizer.pad_token_id, batch_size=3)
    with torch.no_grad():
        for seq, score in zip(seqs, batched):
            hidden = disc.model(input_ids=torch.tensor([seq])).last_hidden_state  # unpadded, one sequence
            assert score == pytest.approx(disc.score(hidden[0, -1]).item(), abs=1e-5)
            # Not a pooled score: the second-to-last token gives a different value.
            assert abs(disc.score(hidden[0, -2]).item() - score) > 1e-6


def _eval_args(disc, student, data, cache, **kw):
    from gad_trl.cli.eval_discriminator import EvalDiscriminatorArguments

    return EvalDiscriminatorArguments(
        discriminator_name_or_path=disc, student_name_or_path=student, dataset_name=data, dataset_split="test",
        num_samples=kw.pop("num_samples", 5), max_new_tokens=6, heldout_cache=cache, **kw,
    )


def test_heldout_set_is_sampled_once_and_reused(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from gad_trl.cli import eval_discriminator as ev

    cache = str(tmp_path / "heldout.jsonl")
    first = ev.evaluate(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, cache))
    assert first["heldout_created"] and first["num_pairs"] == 5
    content = Path(cache).read_text()

    def no_resampling(*a, **k):
        raise AssertionError("the held-out set must not be sampled again")

    monkeypatch.setattr(ev, "sample_triples", no_resampling)
    second = ev.evaluate(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, cache))
    assert not second["heldout_created"] and Path(cache).read_text() == content
    for key in ("accuracy", "score_diff", "teacher_scores", "student_scores"):
        assert second[key] == first[key]
    assert second["heldout"]["seed"] == 42 and second["heldout"]["student"] == str(Path(tiny_model_dir).resolve())
    # Only the cache path and the discriminator: the cache's own settings are used.
    third = ev.evaluate(ev.EvalDiscriminatorArguments(
        discriminator_name_or_path=tiny_discriminator, heldout_cache=cache, num_samples=5, max_new_tokens=6))
    assert third["teacher_scores"] == first["teacher_scores"]


def test_heldout_sampling_is_seeded(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    from gad_trl.cli import eval_discriminator as ev

    monkeypatch.setenv("GAD_TRL_CACHE", str(tmp_path / "cache"))
    a, _, path_a, _ = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, str(tmp_path / "a.jsonl")))
    b, _, _, _ = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, str(tmp_path / "b.jsonl")))
    assert a == b  # same seed, fresh caches: identical triples
    # The default cache path depends on the sampling settings, so another seed is another set.
    c, _, path_c, created = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, None, seed=3, num_samples=8))
    d, _, path_d, created_d = ev.load_or_create_heldout(_eval_args(tiny_discriminator, tiny_model_dir, tiny_data_dir, None, seed=4, num_samples=8))
    assert created and created_d and path_c != path_d and str(path_c).startswith(str(tmp_path / "cache"))
    assert [t["student_completion_ids"] for t in c] != [t["student_completion_ids"] for t in d]


def test_accuracy_and_score_gap(tiny_discriminator):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.data import encode_pair
    from gad_trl.discriminator import score_sequences
    from gad_trl.heldout import evaluate_triples

    def last_token_scores(model, sequences, pad_token_id, batch_size=8):
        with torch.no_grad():
            return score_sequences(model, sequences, pad_token_id, "cpu", batch_size).tolist()

    disc = AutoModelForSequenceClassification.from_pretrained(tiny_discriminator, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_discriminator)
    rows = tiny_gad_rows(6, seed=5)
    identical = [{"prompt": r["prompt"], "teacher_response": r["teacher_response"],
                  "student_response": r["teacher_response"], "student_finished": True} for r in rows]
    metrics = evaluate_triples(disc, tokenizer, identical)
    assert metrics["accuracy"] == 0.0 and metrics["score_diff"] == pytest.approx(0.0, abs=1e-6)

    other = [dict(t, student_response="zero one two three") for t in identical]
    metrics = evaluate_triples(disc, tokenizer, other)
    t = last_token_scores(disc, [encode_pair(tokenizer, r["prompt"], r["teacher_response"]) for r in other], tokenizer.pad_token_id)
    s = last_token_scores(disc, [encode_pair(tokenizer, r["prompt"], r["student_response"]) for r in other], tokenizer.pad_token_id)
    assert metrics["accuracy"] == pytest.approx(sum(a > b for a, b in zip(t, s)) / len(t))
    assert metrics["score_diff"] == pytest.approx(sum(a - b for a, b in zip(t, s)) / len(t), abs=1e-6)


def test_eval_discriminator_command(tiny_discriminator, tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["eval-discriminator", "--discriminator_name_or_path", tiny_discriminator, "--student_name_or_path",
            tiny_model_dir, "--dataset_name", tiny_data_dir, "--num_samples", "4", "--max_new_tokens", "4",
            "--heldout_cache", str(tmp_path / "h.jsonl"), "--output_json", str(out)]
    assert cli_main.main(argv) == 0
    assert "sampled and cached" in capsys.readouterr().out
    assert cli_main.main(argv) == 0
    assert "reused" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["num_pairs"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0


# ------------------------------------------------------------------------------------------------ train, end to end


def test_train_seqkd_end_to_end(tiny_model_dir, tiny_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "seqkd"
    argv = ["--config", TINY_SEQKD, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", str(out), "--max_steps", "3", "--report_to", "none", "--disable_tqdm", "true"]
    trainer = train_cli.main(*train_cli.parse_args(argv))
    assert type(trainer).__name__ == "SFTTrainer"
    # SFT saw prompt-completion rows: the prompt is masked out of the labels, the teacher response is learnt.
    row, source = trainer.train_dataset[0], load_any_dataset(tiny_data_dir)["train"][0]
    learnt = [t for t in row["labels"] if t != -100]
    assert 0 < len(learnt) < len(row["input_ids"])
    assert trainer.processing_class.decode(learnt).startswith(source["teacher_response"])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_gad_end_to_end_through_the_console_entry(tiny_model_dir, tiny_data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out = tmp_path / "gad"
    argv = ["train", "--config", TINY_GAD, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", str(out), "--max_steps", "3", "--critic_warmup_steps", "1", "--sft_warmup_steps", "1",
            "--report_to", "none", "--disable_tqdm", "true"]
    assert cli_main.main(argv) == 0
    student = AutoModelForCausalLM.from_pretrained(out)
    disc = AutoModelForSequenceClassification.from_pretrained(out / "discriminator", num_labels=1)
    assert disc.config.num_labels == 1 and student.config.vocab_size == disc.config.vocab_size
    card = (out / "discriminator" / "README.md").read_text()
    assert "2511.10643" in card and tiny_data_dir in card  # the CLI passes the data set to the card


def test_vllm_serve_reaches_the_real_server_entry(tiny_model_dir, capsys):
    """Unmocked: `gad-trl vllm-serve ... --dry-run` goes through gad_trl.vllm.serve_main and prints the vLLM command."""
    pytest.importorskip("gad_trl.vllm.serve")
    assert cli_main.main(["vllm-serve", "--model", tiny_model_dir, "--weight-sync", "reload", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out and tiny_model_dir in out
