"""`gad_trl.discriminator.heldout`: held-out caches are checked against what they were drawn from, never trusted blindly, and
held-out teacher responses are encoded (and cut) exactly as the trainer encodes them."""

import json

import pytest
import torch
from datasets import Dataset

from gad_trl.data import encode_pair, prompt_ids
from gad_trl.discriminator.heldout import HeldoutCacheMismatch, load_or_sample, save_triples
from gad_trl.discriminator.inputs import InputEncoder
from gad_trl.tiny import tiny_gad_rows
from tests.helpers.gad_helpers import make_args

TRIPLE = {"prompt": [{"role": "user", "content": "write sum"}], "teacher_response": "SUM",
          "student_response": "sum", "student_finished": True}


def test_cache_is_reused_only_with_the_settings_it_was_drawn_with(tmp_path):
    path = tmp_path / "h.jsonl"
    key = {"dataset_name": "/data/a", "dataset_split": "test", "num_samples": 4, "seed": 1}
    draws = []

    def sample():
        draws.append(1)
        return [dict(TRIPLE, row=len(draws))]

    first, _, created = load_or_sample(path, key, sample)
    again, _, created_again = load_or_sample(path, dict(key), sample)
    assert created and not created_again and again == first and len(draws) == 1
    for change in ({"seed": 2}, {"num_samples": 8}, {"dataset_split": "train"}, {"dataset_name": "/data/b"}):
        with pytest.raises(HeldoutCacheMismatch, match=next(iter(change))):
            load_or_sample(path, {**key, **change}, sample)
    assert len(draws) == 1
    # None = not asked (e.g. evaluating from the cache alone): any stored value matches.
    assert load_or_sample(path, {**key, "dataset_name": None}, sample)[0] == first
    # A new run (reuse=False) draws again and replaces the file.
    replaced, _, created = load_or_sample(path, {**key, "seed": 2}, sample, reuse=False)
    assert created and replaced != first and json.loads(path.read_text().splitlines()[0])["seed"] == 2


def test_cache_of_the_old_format_is_refused(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"format": "gad_trl.heldout_triples.v1", "seed": 42}) + "\n" + json.dumps(TRIPLE) + "\n")
    with pytest.raises(HeldoutCacheMismatch, match="delete it"):
        load_or_sample(path, {"seed": 42}, lambda: [TRIPLE])


def test_default_cache_name_differs_for_the_same_relative_path_in_two_projects(tmp_path, monkeypatch):
    from gad_trl.cli.eval_discriminator import EvalDiscriminatorArguments, _sampling_key, default_cache_path

    paths = []
    for project in ("p1", "p2"):
        (tmp_path / project / "data").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / project)
        args = EvalDiscriminatorArguments(discriminator_name_or_path="out/discriminator", dataset_name="data",
                                          student_name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
        key = _sampling_key(args, args.student_name_or_path)
        assert key["dataset_name"] == str(tmp_path / project / "data") and key["student"] == "Qwen/Qwen2.5-0.5B-Instruct"
        paths.append(default_cache_path(key))
    assert paths[0] != paths[1]


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory):
    from gad_trl import GADTrainer

    out = tmp_path_factory.mktemp("heldout-run")
    args = make_args(out, max_completion_length=3, per_device_eval_batch_size=4, discriminator_heldout_size=3)
    return GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(8)),
                      eval_dataset=Dataset.from_list(tiny_gad_rows(6, seed=1)))


def test_new_run_does_not_reuse_triples_left_by_an_earlier_run(trainer):
    stale = [dict(TRIPLE, teacher_response="LEFT BY AN EARLIER RUN")]
    path = f"{trainer.args.output_dir}/heldout_triples.jsonl"
    save_triples(path, stale, {"seed": trainer.args.seed, "num_samples": 1})
    triples = trainer.heldout_triples()
    assert len(triples) == 3 and all(t["teacher_response"] != "LEFT BY AN EARLIER RUN" for t in triples)
    assert "LEFT BY AN EARLIER RUN" not in open(path).read()


def test_heldout_teacher_is_cut_at_max_completion_length_as_in_training(trainer):
    tok = trainer.processing_class
    long_answer = "SUM PLUS ONE TWO THREE FOUR FIVE"
    triple = dict(TRIPLE, teacher_response=long_answer)
    # What the trainer feeds its discriminator for this row (prompt ids + cut teacher completion).
    encoder = trainer.discriminator_component.encoder
    head = prompt_ids(tok, triple["prompt"])
    batch = encoder.encode([{"prompt": triple["prompt"], trainer.args.teacher_response_column: long_answer}], [head],
                           [[tok.eos_token_id]])
    held_out = encode_pair(tok, triple["prompt"], long_answer, True, encoder.end_token_id, trainer.max_completion_length)
    assert batch.teacher_truncated == 1 and batch.teacher_seqs[0] == held_out
    assert len(held_out) == len(head) + 3
    assert encoder.encode_triples([triple]).teacher_seqs == [held_out]  # the held-out set reads the same sequence

    from gad_trl.discriminator.model import score_sequences

    scores = trainer.discriminator_component.evaluate_triples([triple])
    with torch.no_grad():
        expected = score_sequences(trainer.discriminator, [held_out], tok.pad_token_id, trainer.accelerator.device).item()
        uncut = score_sequences(trainer.discriminator, [encode_pair(tok, triple["prompt"], long_answer)],
                                tok.pad_token_id, trainer.accelerator.device).item()
    assert scores["teacher_scores"][0] == pytest.approx(expected, abs=1e-5 if not trainer.args.bf16 else 3e-2)
    assert abs(uncut - expected) > 1e-6


def test_scores_are_taken_at_the_last_token(tiny_discriminator):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.data import encode_pair
    from gad_trl.discriminator.model import score_sequences

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


def test_accuracy_and_score_gap(tiny_discriminator):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.data import encode_pair
    from gad_trl.discriminator.heldout import evaluate_triples
    from gad_trl.discriminator.model import score_sequences

    def last_token_scores(model, sequences, pad_token_id, batch_size=8):
        with torch.no_grad():
            return score_sequences(model, sequences, pad_token_id, "cpu", batch_size).tolist()

    disc = AutoModelForSequenceClassification.from_pretrained(tiny_discriminator, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_discriminator)
    rows = tiny_gad_rows(6, seed=5)
    identical = [{"prompt": r["prompt"], "teacher_response": r["teacher_response"],
                  "student_response": r["teacher_response"], "student_finished": True} for r in rows]
    metrics = evaluate_triples(disc, InputEncoder(tokenizer), identical)
    assert metrics["accuracy"] == 0.0 and metrics["score_diff"] == pytest.approx(0.0, abs=1e-6)

    other = [dict(t, student_response="zero one two three") for t in identical]
    metrics = evaluate_triples(disc, InputEncoder(tokenizer), other)
    t = last_token_scores(disc, [encode_pair(tokenizer, r["prompt"], r["teacher_response"]) for r in other], tokenizer.pad_token_id)
    s = last_token_scores(disc, [encode_pair(tokenizer, r["prompt"], r["student_response"]) for r in other], tokenizer.pad_token_id)
    assert metrics["accuracy"] == pytest.approx(sum(a > b for a, b in zip(t, s)) / len(t))
    assert metrics["score_diff"] == pytest.approx(sum(a - b for a, b in zip(t, s)) / len(t), abs=1e-6)


def test_evaluation_scores_with_the_discriminator_in_eval_mode(tiny_model_dir, tmp_path):
    from gad_trl import GADTrainer

    args = make_args(tmp_path, max_steps=1, per_device_eval_batch_size=4)
    trainer = GADTrainer(tiny_model_dir, args=args, train_dataset=Dataset.from_list(tiny_gad_rows(4)),
                         eval_dataset=Dataset.from_list(tiny_gad_rows(4, seed=1)))
    modes = []
    trainer.discriminator.register_forward_hook(lambda m, i, o: modes.append(m.training))
    backbone = trainer.discriminator.model
    backbone.register_forward_hook(lambda m, i, o: modes.append(m.training))
    trainer.evaluate()
    assert modes and not any(modes)
    assert trainer.discriminator.training  # back in train mode for the next step

