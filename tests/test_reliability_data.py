"""Reliability round 3, data side: teacher text cannot smuggle control tokens, prompts longer than the student's
context fail at data preparation, and misleading data errors name the row or the path."""

from __future__ import annotations

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError, encode_pair, load_any_dataset, prepare_gad_dataset, teacher_completion_ids
from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows
from tests.helpers.gad_helpers import make_args, make_trainer

SMUGGLED = "yes sure <|im_end|> the <|endoftext|> end"


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _special_ids(tok) -> set[int]:
    return {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")}


def test_special_token_strings_in_teacher_text_are_plain_text(tok):
    ids, _ = teacher_completion_ids(tok, SMUGGLED, tok.eos_token_id)
    # Only the appended end-of-turn token is a control token; the literal strings became ordinary tokens...
    assert [i for i in ids if i in _special_ids(tok)] == [tok.eos_token_id]
    assert ids[-1] == tok.eos_token_id
    # ...which decode back to the literal text.
    assert tok.decode(ids[:-1]).replace(" ", "") == SMUGGLED.replace(" ", "")
    # Without the fix the tokenizer reads them as control tokens (what the probe saw).
    plain = tok(SMUGGLED, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in plain


def test_the_trainer_and_the_heldout_encoding_agree_on_smuggled_text(tiny_model_dir, tmp_path, tok):
    rows = tiny_gad_rows(8, seed=0)
    rows[3]["teacher_response"] = SMUGGLED
    trainer = make_trainer(tiny_model_dir, tmp_path, rows=rows, max_completion_length=64)
    encoder = trainer.discriminator_component.encoder
    ids, _ = encoder.teacher_completion_ids(SMUGGLED)
    assert [i for i in ids if i in _special_ids(tok)] == [encoder.end_token_id]
    heldout = encode_pair(trainer.processing_class, rows[3]["prompt"], SMUGGLED, True, encoder.end_token_id)
    assert heldout[-len(ids):] == ids


def test_teacher_special_tokens_error_names_the_row(tiny_model_dir, tmp_path):
    rows = tiny_gad_rows(8, seed=0)
    rows[5]["teacher_response"] = SMUGGLED
    with pytest.raises(GADDataError, match=r"Row 5: column 'teacher_response' contains the special-token string"):
        make_trainer(tiny_model_dir, tmp_path, rows=rows, teacher_special_tokens="error")
    with pytest.raises(ValueError, match="teacher_special_tokens='typo' is not one of"):
        make_args(tmp_path, teacher_special_tokens="typo")


def test_analyze_lengths_counts_rows_with_special_token_strings(tok):
    from gad_trl.cli.analyze_lengths import AnalyzeLengthsArguments, analyze, format_report

    rows = tiny_gad_rows(6, seed=0)
    rows[2]["teacher_response"] = SMUGGLED
    report = analyze(AnalyzeLengthsArguments(model_name_or_path="tiny", dataset_name="rows"), tok,
                     Dataset.from_list(rows))
    assert report["teacher_rows_with_special_token_strings"] == 1
    assert report["teacher_special_token_rows_first"] == [2]
    assert "encodes them as plain text" in format_report(report)


def test_a_prompt_longer_than_the_context_fails_at_construction_naming_max_prompt_length(tiny_model_dir, tmp_path):
    from gad_trl.cli.utils import filter_long_prompts

    rows = tiny_gad_rows(8, seed=0)
    rows[6]["prompt"] = [{"role": "user", "content": " ".join(["the"] * 1100)}]  # tiny model: 1024 positions
    with pytest.raises(GADDataError, match=r"Row 6: the prompt is \d+ tokens.*max_position_embeddings=1024 minus "
                                           r"max_completion_length=8.*--max_prompt_length 1016"):
        make_trainer(tiny_model_dir, tmp_path, rows=rows)
    # `--max_prompt_length` at the limit drops exactly that row, and the trainer then accepts the data.
    kept = filter_long_prompts(Dataset.from_list(rows), build_tiny_tokenizer(), 1016)
    assert len(kept) == 7
    make_trainer(tiny_model_dir, tmp_path, rows=list(kept))


def test_max_completion_length_filling_the_context_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="max_completion_length=1024 leaves no room for a prompt"):
        make_trainer(tiny_model_dir, tmp_path, max_completion_length=1024)


def test_mixed_prompt_formats_name_the_row(tok):
    rows = tiny_gad_rows(4, seed=0)
    rows[2] = {"prompt": "plain text prompt", "teacher_response": "an answer"}
    ds = Dataset.from_list(rows, on_mixed_types="use_json")  # the only way Arrow holds such a column
    with pytest.raises(GADDataError, match="Row 2 of the train set has a plain string as its prompt, but row 0 has a "
                                           "message list"):
        prepare_gad_dataset(ds, tokenizer=tok)


def test_a_mistyped_local_data_folder_is_not_a_hub_error(tmp_path):
    (tmp_path / "teacher_data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"local data path .*teacher_dta' does not exist.*Did you mean "
                                                r".*teacher_data'"):
        load_any_dataset(str(tmp_path / "teacher_dta"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_any_dataset("./no/such/folder")
