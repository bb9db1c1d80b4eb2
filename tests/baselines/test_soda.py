"""SODA (`gad-trl soda`, `gad_trl.baselines.soda`): one preference pair per teacher answer with a student sample as
`rejected`, the sample cache (reuse, resume, other settings refused), empty and failed samples reported, a real
DPOTrainer run through `build_trainer`, bad inputs, the CLI, and sampling from the suite's vLLM server."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from gad_trl import local_generation
from gad_trl.baselines import soda as S
from gad_trl.data import GADDataError
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import REPO, params_of, read_jsonl, same_params

TINY_SODA = str(REPO / "recipes" / "tiny" / "soda.yaml")
FAST = dict(max_new_tokens=6, seed=0)


@pytest.fixture(scope="module")
def student(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def generated(monkeypatch):
    """The prompts the student was asked to answer with transformers, one list per batch."""
    calls = []
    real = local_generation.generate_completions

    def counting(model, tokenizer, prompts, *args, **kwargs):
        calls.append(list(prompts))
        return real(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(local_generation, "generate_completions", counting)
    return calls


def k_rows():
    """Row 0 holds 3 teacher answers, the others one (a list column throughout, as Arrow needs); row 3 repeats row 1's
    prompt."""
    rows = tiny_gad_rows(4, seed=0)
    for row in rows:
        row["teacher_response"] = [row["teacher_response"]]
    rows[0]["teacher_response"] += ["ANOTHER ANSWER", "A THIRD ONE"]
    rows[3]["prompt"] = rows[1]["prompt"]
    return rows


def assistant(text):
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------ pairs
def test_one_answer_per_row_gives_one_pair_whose_rejected_is_the_students_sample(student, generated):
    model, tokenizer = student
    rows = tiny_gad_rows(5, seed=0)
    pairs = S.build_soda_dataset(rows, model, tokenizer, batch_size=8, **FAST)
    assert pairs.column_names == ["prompt", "chosen", "rejected"] and len(pairs) == 5
    assert pairs["prompt"] == [r["prompt"] for r in rows]
    assert pairs["chosen"] == [assistant(r["teacher_response"]) for r in rows]
    assert len(generated) == 1 and generated[0] == [r["prompt"] for r in rows]  # one batch, every prompt once
    # The rejected texts are the student's own samples, each seeded by its slot, decoded without the stop token.
    seeds = [S.request_seed(0, slot.key, 0) for slot in S.preference_slots(rows)]
    again = local_generation.generate_completions(model, tokenizer, [r["prompt"] for r in rows], 6, batch_size=5,
                                                  row_seeds=seeds, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    expected = [tokenizer.decode(ids[:-1] if done else ids, skip_special_tokens=True) for ids, done in again]
    assert [r[0]["content"] for r in pairs["rejected"]] == expected
    assert all(m[0]["role"] == "assistant" and m[0]["content"].strip() for m in pairs["rejected"])


def test_k_answers_give_k_pairs_each_with_its_own_sample(student, generated):
    model, tokenizer = student
    rows = k_rows()
    slots = S.preference_slots(Dataset.from_list(rows))
    assert [(s.row, s.answer, s.sample_index) for s in slots] == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 0),
                                                                  (2, 0, 0), (3, 0, 1)]  # row 3 repeats row 1's prompt
    pairs = S.build_soda_dataset(Dataset.from_list(rows), model, tokenizer, **FAST)
    assert len(pairs) == 6 == sum(len(batch) for batch in generated)
    assert [c[0]["content"] for c in pairs["chosen"]] == [a for r in rows for a in r["teacher_response"]]
    assert pairs["prompt"][:3] == [rows[0]["prompt"]] * 3 and pairs["prompt"][5] == rows[1]["prompt"]
    rejected = [r[0]["content"] for r in pairs["rejected"]]
    assert len(set(rejected[:3])) == 3 and rejected[3] != rejected[5]  # one sample per pair, not one per prompt


# ------------------------------------------------------------------ cache
def test_cache_is_reused_resumed_and_refuses_other_settings(student, generated, tmp_path):
    model, tokenizer = student
    rows, cache = k_rows(), tmp_path / "rejected.jsonl"
    first = S.build_soda_dataset(rows, model, tokenizer, cache_path=cache, **FAST)
    drawn = sum(map(len, generated))
    assert drawn == 6
    lines = read_jsonl(cache)
    assert lines[0]["key"] == S.SETTINGS_ID and lines[0]["settings"]["temperature"] == 1.0
    assert lines[0]["settings"]["student_weights"].startswith("params:") and len(lines) == 7

    # Same settings: nothing drawn, same pairs, also for a reordered subset of the rows.
    assert S.build_soda_dataset(rows, model, tokenizer, cache_path=cache, **FAST).to_list() == first.to_list()
    subset = S.build_soda_dataset([rows[2], rows[0]], model, tokenizer, cache_path=cache, **FAST)
    assert sum(map(len, generated)) == drawn
    assert subset["rejected"] == [first["rejected"][4], *first["rejected"][:3]]

    # A run killed mid-write: only the torn sample is drawn again.
    text = cache.read_text()
    cache.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + '{"key": "torn')
    S.build_soda_dataset(rows, model, tokenizer, cache_path=cache, **FAST)
    assert sum(map(len, generated)) == drawn + 1

    # Other sampling settings or another student: an error naming each difference; nothing drawn.
    with pytest.raises(S.SODACacheMismatch, match=r"temperature: cache 1\.0, asked 0\.7.*delete it"):
        S.build_soda_dataset(rows, model, tokenizer, cache_path=cache, temperature=0.7, **FAST)
    with pytest.raises(S.SODACacheMismatch, match="max_new_tokens: cache 6, asked 7"):
        S.build_soda_dataset(rows, model, tokenizer, cache_path=cache, max_new_tokens=7, seed=0)
    changed = type(model)(model.config)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(changed.parameters()).add_(1.0)
    with pytest.raises(S.SODACacheMismatch, match="student_weights"):
        S.build_soda_dataset(rows, changed, tokenizer, cache_path=cache, **FAST)
    assert sum(map(len, generated)) == drawn + 1
    # Another cache file: a fresh draw.
    S.build_soda_dataset(rows, model, tokenizer, cache_path=tmp_path / "other.jsonl", temperature=0.7, **FAST)
    assert sum(map(len, generated)) == drawn + 1 + 6


def test_a_file_that_is_not_a_soda_cache_is_refused(student, tmp_path):
    model, tokenizer = student
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "x", "rejected": "y"}) + "\n")
    with pytest.raises(S.SODACacheMismatch, match="not a SODA rejected-sample cache"):
        S.build_soda_dataset(tiny_gad_rows(2), model, tokenizer, cache_path=path, **FAST)


# ------------------------------------------------------------------ unusable samples
class ScriptedSampler:
    """A sampler whose answers are scripted per (row, attempt): "" = empty, an exception = a failed request."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def identity(self):
        return {"student": "scripted", "student_weights": None}

    def sample(self, slots, sampling, attempt=0):
        self.calls.append((attempt, [s.row for s in slots]))
        for slot in slots:
            answer = self.script(slot.row, attempt)
            yield slot, answer if isinstance(answer, BaseException) else S.RejectedSample(answer, True, 3)

    def close(self):
        pass


def test_an_empty_sample_is_drawn_again_and_reported_when_it_stays_empty(tmp_path):
    rows = tiny_gad_rows(4, seed=0)
    flaky = ScriptedSampler(lambda row, attempt: "  " if (row == 2 and attempt == 0) else f"student {row}")
    pairs = S.build_soda_dataset(rows, sampler=flaky, **FAST)
    assert flaky.calls == [(0, [0, 1, 2, 3]), (1, [2])]
    assert [r[0]["content"] for r in pairs["rejected"]] == ["student 0", "student 1", "student 2", "student 3"]

    cache = tmp_path / "cache.jsonl"
    mute = ScriptedSampler(lambda row, attempt: "" if row in (1, 3) else "fine")
    with pytest.raises(S.SODASampleError, match=r"2 sample\(s\) were empty after 3 draw\(s\) \(rows \[1, 3\]\).*cached"):
        S.build_soda_dataset(rows, sampler=mute, cache_path=cache, **FAST)
    assert mute.calls == [(0, [0, 1, 2, 3]), (1, [1, 3]), (2, [1, 3])]
    assert sorted(r["row"] for r in read_jsonl(cache)[1:]) == [0, 2]  # the good ones are kept for the rerun


def test_a_failed_request_is_reported_with_its_row():
    failing = ScriptedSampler(lambda row, attempt: RuntimeError("HTTP 500 boom") if row == 1 else "ok")
    with pytest.raises(S.SODASampleError, match=r"1 request\(s\) failed \(first: row 1: HTTP 500 boom\)"):
        S.build_soda_dataset(tiny_gad_rows(3), sampler=failing, **FAST)


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs_fail_clearly(student):
    model, tokenizer = student
    rows = tiny_gad_rows(3)
    with pytest.raises(GADDataError, match="no teacher response column 'answer'.*teacher_response_column"):
        S.build_soda_dataset(Dataset.from_list(rows), model, tokenizer, teacher_response_column="answer")
    rows[1]["teacher_response"] = " "
    with pytest.raises(GADDataError, match="Row 1: column 'teacher_response' is an empty string"):
        S.build_soda_dataset(rows, model, tokenizer)
    with pytest.raises(GADDataError, match="no rows"):
        S.build_soda_dataset([], model, tokenizer)
    with pytest.raises(ValueError, match="needs the student"):
        S.build_soda_dataset(tiny_gad_rows(2))
    with pytest.raises(ValueError, match="without its tokenizer"):
        S.build_soda_dataset(tiny_gad_rows(2), model)
    with pytest.raises(ValueError, match="top_p must be in"):
        S.build_soda_dataset(tiny_gad_rows(2), model, tokenizer, top_p=0.0)


def test_soda_config_checks_its_fields():
    from gad_trl.config import SODAConfig

    base = dict(output_dir="out", use_cpu=True, report_to="none")
    args = SODAConfig(**base)
    assert args.beta == 0.1 and args.learning_rate == 1e-6 and args.loss_type == ["sigmoid"]  # TRL's DPO defaults
    assert args.rejected_cache_path().endswith("out/_soda_rejected.jsonl") and args.rejected_sampling_seed() == 42
    for field, value, message in [
        ("rejected_temperature", -1.0, "rejected_temperature must be"),
        ("rejected_top_p", 0.0, "rejected_top_p must be in"),
        ("rejected_max_new_tokens", 0, "rejected_max_new_tokens must be a positive integer"),
        ("rejected_base_url", "localhost:8000", "must be an http"),
        ("rejected_model", "student", "rejected_base_url is not set"),
    ]:
        with pytest.raises(ValueError, match=message):
            SODAConfig(**base, **{field: value})


# ------------------------------------------------------------------ the command
def parse(argv):
    from gad_trl.cli import soda

    return soda.make_parser().parse_args_and_config(argv)


def test_build_trainer_runs_dpo_that_changes_the_student(tiny_model_dir, tiny_data_dir, tmp_path):
    from trl import DPOTrainer

    from gad_trl.cli import soda

    out = tmp_path / "soda"
    argv = ["--config", TINY_SODA, "--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir,
            "--output_dir", str(out), "--max_train_samples", "8", "--per_device_train_batch_size", "4",
            "--max_steps", "2", "--rejected_max_new_tokens", "6", "--learning_rate", "1e-2", "--report_to", "none",
            "--logging_steps", "1",
            "--disable_tqdm", "true"]
    script_args, args, model_args = parse(argv)
    assert type(args).__name__ == "SODAConfig" and script_args.stage == "soda"
    trainer = soda.build_trainer(script_args, args, model_args)
    assert isinstance(trainer, DPOTrainer) and len(trainer.train_dataset) == 8
    cached = read_jsonl(out / "_soda_rejected.jsonl")
    assert cached[0]["settings"]["student"] == tiny_model_dir and len(cached) == 9
    assert cached[0]["settings"]["student_weights"].startswith("files:")
    before = params_of(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 2 and not same_params(before, params_of(trainer.model))
    logged = trainer.state.log_history[0]
    assert "rewards/margins" in logged and torch.isfinite(torch.tensor(logged["loss"]))

    # `gad-trl train` follows the recipe's stage to the same command; a GAD-only field is refused.
    from gad_trl.cli import train as train_cli

    _, args, _ = train_cli.parse_args(["--config", TINY_SODA])
    assert type(args).__name__ == "SODAConfig" and args.rejected_max_new_tokens == 16
    with pytest.raises(ValueError, match="reward_funcs"):
        soda.build_trainer(*parse([*argv, "--reward_funcs", "think_format_reward"]))


def test_cli_help_lists_the_soda_fields(capsys):
    import gad_trl.cli.main as cli_main

    with pytest.raises(SystemExit) as exit_:
        cli_main.main(["soda", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "gad-trl soda" in out and "--rejected_temperature" in out and "--rejected_base_url" in out
    assert cli_main.main(["--help"]) == 0 and "soda" in capsys.readouterr().out


# ------------------------------------------------------------------ vLLM server
@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_rejected_samples_from_the_vllm_server(vllm_server, tmp_path):
    rows = k_rows()[:3]  # 3 + 1 + 1 pairs
    cache = tmp_path / "rejected.jsonl"
    before = vllm_server.count_requests("/v1/chat/completions")
    sampler = S.OpenAISampler(f"{vllm_server.url}/v1")
    pairs = S.build_soda_dataset(rows, sampler=sampler, cache_path=cache, max_new_tokens=6, seed=0)
    assert len(pairs) == 5 and all(r[0]["content"].strip() for r in pairs["rejected"])
    assert [c[0]["content"] for c in pairs["chosen"]] == [a for r in rows for a in r["teacher_response"]]
    sent = vllm_server.count_requests("/v1/chat/completions") - before
    assert sent >= 5  # one request per pair (more only if an empty sample was drawn again)
    assert read_jsonl(cache)[0]["settings"]["student"] == vllm_server.model
    again = S.build_soda_dataset(rows, sampler=S.OpenAISampler(f"{vllm_server.url}/v1"), cache_path=cache,
                                 max_new_tokens=6, seed=0)
    assert again.to_list() == pairs.to_list()
    assert vllm_server.count_requests("/v1/chat/completions") - before == sent  # the cache answered


def test_soda_refuses_tools_rather_than_ignoring_them():
    from gad_trl.cli import soda
    from gad_trl.cli import train as train_cli

    with pytest.raises(ValueError, match="tools: SODA samples and trains on text answers"):
        soda.build_trainer(*train_cli.parse_args(["--config", TINY_SODA, "--tools", "gad_trl.tiny:add"]))


# ------------------------------------------------------------------------------------ 3. SODA's draw on resume
def test_resumed_soda_draws_the_samples_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """A run killed after its first batch (its cache holds that batch) and resumed draws, for the other rows, the
    samples an uninterrupted run draws: each sample has its own seed, not a place in one random stream."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gad_trl.baselines.soda import build_soda_dataset
    from gad_trl.tiny import tiny_gad_rows

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = tiny_gad_rows(4, seed=0)
    settings = dict(max_new_tokens=8, seed=0, batch_size=2, temperature=1.0)
    whole = build_soda_dataset(rows, model, tokenizer, cache_path=tmp_path / "whole.jsonl", **settings)
    cache = tmp_path / "killed.jsonl"
    build_soda_dataset(rows[:2], model, tokenizer, cache_path=cache, **settings)  # the batch done before the kill
    resumed = build_soda_dataset(rows, model, tokenizer, cache_path=cache, **settings)
    assert resumed["rejected"] == whole["rejected"]
    assert len({m[0]["content"] for m in whole["rejected"]}) > 1  # really sampled, not one fixed answer

