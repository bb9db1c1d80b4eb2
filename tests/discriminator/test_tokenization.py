"""A discriminator with its own tokenizer (issue 20, item 5): prompts and responses are re-tokenised with its
vocabulary and chat template, both sides the same way; without its tokenizer a smaller vocabulary is a clear error."""

from __future__ import annotations

import os

import pytest
import torch

from gad_trl.data import teacher_completion_ids
from gad_trl.discriminator.inputs import InputEncoder
from gad_trl.discriminator.tokenization import DiscriminatorEncoding, same_tokenizer
from gad_trl.tiny import build_tiny_tokenizer, save_tiny_model, tiny_gad_rows
from tests.helpers.gad_helpers import make_trainer

PROMPT = [{"role": "user", "content": "reverse the list please"}]


@pytest.fixture(scope="module")
def other_disc_dir(tmp_path_factory):
    """A tiny Qwen2 saved with a tokenizer of another family (400 tokens, other special tokens and template)."""
    return save_tiny_model(tmp_path_factory.mktemp("other-disc"), seed=3,
                           tokenizer=build_tiny_tokenizer(400, other_family=True))


def test_teacher_and_student_with_the_same_text_encode_identically():
    student, disc = build_tiny_tokenizer(), build_tiny_tokenizer(400, other_family=True)
    assert not same_tokenizer(student, disc) and same_tokenizer(student, build_tiny_tokenizer())
    encoding = DiscriminatorEncoding(student, disc, [student.eos_token_id])
    text = "yes sure the sum is two"
    sampled = student(text, add_special_tokens=False)["input_ids"] + [student.eos_token_id]  # a finished sample
    teacher, _ = teacher_completion_ids(student, text, student.eos_token_id)
    seq_s, start_s = encoding.encode(PROMPT, sampled)
    seq_t, start_t = encoding.encode(PROMPT, teacher)
    assert seq_s == seq_t and start_s == start_t
    # In the discriminator's own layout: its chat template, its tokens for the text, its end-of-turn token.
    head = disc.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert seq_s == disc(head, add_special_tokens=False)["input_ids"] + disc(text, add_special_tokens=False)[
        "input_ids"] + [disc.convert_tokens_to_ids("<|end_turn|>")]
    # An unfinished sample (no stop token) gets no end-of-turn token.
    assert encoding.response_ids(sampled[:-1]) == disc(text, add_special_tokens=False)["input_ids"]


def test_gad_trains_with_a_discriminator_of_another_tokenizer(tiny_model_dir, other_disc_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=2, max_completion_length=12,
                           discriminator_model_name_or_path=other_disc_dir, save_strategy="no")
    assert trainer.discriminator_component.encoder.encoding is not None
    disc_tok = trainer.discriminator_processing_class
    assert len(disc_tok) == 400 and trainer.discriminator.config.pad_token_id == disc_tok.pad_token_id
    seen = {}
    update = trainer.discriminator_component.update

    def spy(batch, step):
        seen.setdefault("batches", []).append((batch.teacher_seqs, batch.student_seqs, batch.response_starts))
        return update(batch, step)

    trainer.discriminator_component.update = spy
    before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.train()
    assert len(seen["batches"]) == 2
    turn = disc_tok.convert_tokens_to_ids("<|turn|>")
    for teacher_seqs, student_seqs, starts in seen["batches"]:
        for seq in teacher_seqs + student_seqs:
            assert max(seq) < 400 and seq[0] == turn  # the discriminator's own template and vocabulary
        # Teacher sequences: the discriminator's tokens of the teacher text, then its end-of-turn token.
        rows = {r["teacher_response"] for r in tiny_gad_rows(8, seed=0)}
        for seq, start in zip(teacher_seqs, starts):
            text = disc_tok.decode(seq[start:-1]) if seq[-1] == disc_tok.eos_token_id else disc_tok.decode(seq[start:])
            assert any(r.startswith(text.strip()[:10]) for r in rows)
    after = trainer.discriminator.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned
    trainer.save_model(str(tmp_path / "final"))
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(tmp_path / "final" / "discriminator")) == 400  # saved with its own


def test_a_smaller_vocabulary_without_its_tokenizer_is_a_clear_error(tiny_model_dir, other_disc_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare-disc"
    shutil.copytree(other_disc_dir, bare)
    for name in os.listdir(bare):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            os.remove(bare / name)
    with pytest.raises(ValueError, match=r"vocabulary has 400 tokens but the student's tokenizer has 1000.*"
                                         r"discriminator_processing_class"):
        make_trainer(tiny_model_dir, tmp_path / "out", discriminator_model_name_or_path=str(bare))
    # Given explicitly, the same folder trains.
    from gad_trl import GADTrainer
    from datasets import Dataset
    from tests.helpers.gad_helpers import make_args

    trainer = GADTrainer(tiny_model_dir, args=make_args(tmp_path / "out2", max_steps=1,
                                                        discriminator_model_name_or_path=str(bare)),
                         train_dataset=Dataset.from_list(tiny_gad_rows(8, seed=0)),
                         discriminator_processing_class=build_tiny_tokenizer(400, other_family=True))
    trainer.train()


def test_a_discriminator_saved_with_the_students_tokenizer_reads_its_ids_directly(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, max_steps=1, discriminator_model_name_or_path=tiny_model_dir)
    assert trainer.discriminator_component.encoder.encoding is None
    assert trainer.discriminator_processing_class is trainer.processing_class


def test_heldout_scoring_re_encodes_both_sides(other_disc_dir):
    from transformers import AutoModelForSequenceClassification

    from gad_trl.discriminator.heldout import evaluate_triples
    from gad_trl.discriminator.model import score_sequences

    student, disc_tok = build_tiny_tokenizer(), build_tiny_tokenizer(400, other_family=True)
    model = AutoModelForSequenceClassification.from_pretrained(other_disc_dir, num_labels=1)
    model.config.pad_token_id = disc_tok.pad_token_id
    encoding = DiscriminatorEncoding(student, disc_tok, [student.eos_token_id])
    triples = [{"prompt": r["prompt"], "teacher_response": r["teacher_response"], "student_response": "yes the sum",
                "student_finished": True} for r in tiny_gad_rows(3, seed=0)]
    metrics = evaluate_triples(model, InputEncoder(student, encoding=encoding), triples)
    expected = [encoding.prompt_ids(t["prompt"]) + disc_tok(t["teacher_response"], add_special_tokens=False)[
        "input_ids"] + [encoding.end_token_id] for t in triples]
    scores = score_sequences(model, expected, disc_tok.pad_token_id, "cpu").tolist()
    assert metrics["teacher_scores"] == pytest.approx(scores, abs=1e-5)


def test_eval_discriminator_re_encodes_for_a_discriminator_with_its_own_tokenizer(
        tiny_model_dir, other_disc_dir, tiny_data_dir, tmp_path):
    """The held-out triples hold the student's tokens; a discriminator saved with another tokenizer reads them in its
    own (before: an IndexError from ids past its 400-token vocabulary)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from gad_trl.cli import eval_discriminator as ev
    from gad_trl.discriminator.heldout import evaluate_triples, load_triples

    disc_dir = tmp_path / "disc"
    disc = AutoModelForSequenceClassification.from_pretrained(other_disc_dir, num_labels=1)
    disc_tok = AutoTokenizer.from_pretrained(other_disc_dir)
    disc.config.pad_token_id = disc_tok.pad_token_id
    disc.save_pretrained(disc_dir)
    disc_tok.save_pretrained(disc_dir)
    cache = tmp_path / "heldout.jsonl"
    metrics = ev.evaluate(ev.EvalDiscriminatorArguments(
        discriminator_name_or_path=str(disc_dir), student_name_or_path=tiny_model_dir, dataset_name=tiny_data_dir,
        dataset_split="test", num_samples=4, max_new_tokens=6, heldout_cache=str(cache)))
    assert metrics["num_pairs"] == 4
    triples, _ = load_triples(cache)
    student_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []
    disc.model.embed_tokens.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    encoding = DiscriminatorEncoding(student_tok, disc_tok, [student_tok.eos_token_id])
    expected = evaluate_triples(disc, InputEncoder(student_tok, 6, encoding=encoding), triples, 8)
    assert metrics["teacher_scores"] == pytest.approx(expected["teacher_scores"])
    assert metrics["student_scores"] == pytest.approx(expected["student_scores"])
    turn = disc_tok.convert_tokens_to_ids("<|turn|>")
    assert seen and all(int(ids.max()) < 400 and int(ids[0, 0]) == turn for ids in seen)
