"""Data normalisation and the errors that name the row, the column and the fix."""

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError, prepare_gad_dataset
from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def test_conversational_verl_and_plain_formats_are_accepted(tok):
    conv = prepare_gad_dataset(Dataset.from_list(tiny_gad_rows(3, fmt="conversational")), tokenizer=tok)
    verl = prepare_gad_dataset(Dataset.from_list(tiny_gad_rows(3, fmt="verl")), tokenizer=tok)
    plain = prepare_gad_dataset(Dataset.from_list(tiny_gad_rows(3, fmt="standard")), tokenizer=tok)
    assert conv["prompt"] == verl["prompt"]  # verl's `content` becomes TRL's `prompt`
    assert "content" not in verl.column_names
    assert isinstance(plain["prompt"][0], str)
    assert conv["teacher_response"] == plain["teacher_response"]


def test_teacher_response_as_one_assistant_message_becomes_text(tok):
    rows = [{"prompt": [{"role": "user", "content": "hi"}], "teacher_response": [{"role": "assistant", "content": "HI"}]}]
    assert prepare_gad_dataset(Dataset.from_list(rows), tokenizer=tok)["teacher_response"] == ["HI"]


def test_custom_teacher_column_and_extra_columns_are_kept(tok):
    rows = [{"prompt": "hi", "gpt5": "HI", "source": "x"}]
    out = prepare_gad_dataset(Dataset.from_list(rows), "gpt5", tok)
    assert out[0] == {"prompt": "hi", "gpt5": "HI", "source": "x"}


@pytest.mark.parametrize(
    "rows, column, match",
    [
        ([{"prompt": "a", "answer": "b"}], "teacher_response", r"no teacher response column 'teacher_response'.*answer"),
        ([{"question": "a", "teacher_response": "b"}], "teacher_response", r"no prompt column.*'content'"),
        ([{"prompt": "a", "teacher_response": "ok"}, {"prompt": "b", "teacher_response": None}], "teacher_response", r"Row 1: column 'teacher_response' is None"),
        ([{"prompt": "a", "teacher_response": "   "}], "teacher_response", r"Row 0: column 'teacher_response' is an empty string"),
        ([{"prompt": "a", "teacher_response": 3}], "teacher_response", r"Row 0: column 'teacher_response' has type int"),
        ([{"prompt": "", "teacher_response": "x"}], "teacher_response", r"Row 0: column 'prompt' is an empty string"),
        ([{"prompt": [{"role": "user", "content": "a"}], "teacher_response": [{"role": "user", "content": "x"}]}], "teacher_response", r"Row 0: column 'teacher_response' holds a 'user' message"),
        ([{"prompt": [{"role": "user", "content": "a"}], "teacher_response": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}], "teacher_response", r"answer 1 holds a 'user' message"),
            ([{"prompt": "a", "teacher_response": []}], "teacher_response", r"column 'teacher_response' is an empty list"),
            ([{"prompt": "a", "teacher_response": ["x", "  "]}], "teacher_response", r"answer 1 is an empty string"),
        ([{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "teacher_response": "x"}], "teacher_response", r"ends with an assistant message"),
    ],
)
def test_bad_rows_raise_errors_naming_row_and_column(tok, rows, column, match):
    with pytest.raises(GADDataError, match=match):
        prepare_gad_dataset(Dataset.from_list(rows), column, tok)


def test_wrong_prompt_type_is_named(tok):
    ds = Dataset.from_dict({"prompt": [1, 2], "teacher_response": ["a", "b"]})
    with pytest.raises(GADDataError, match=r"Row 0: column 'prompt' has type int"):
        prepare_gad_dataset(ds, tokenizer=tok)


def test_messages_without_chat_template_are_rejected(tok):
    tok_no_template = build_tiny_tokenizer()
    tok_no_template.chat_template = None
    with pytest.raises(GADDataError, match=r"Row 0: column 'prompt' holds chat messages but the tokenizer has no chat template"):
        prepare_gad_dataset(Dataset.from_list(tiny_gad_rows(2)), tokenizer=tok_no_template)


def test_dataset_dict_and_non_datasets_are_rejected(tok):
    from datasets import DatasetDict

    with pytest.raises(GADDataError, match=r"pass one split"):
        prepare_gad_dataset(DatasetDict({"train": Dataset.from_list(tiny_gad_rows(2))}), tokenizer=tok)
    with pytest.raises(GADDataError, match=r"Dataset.from_list"):
        prepare_gad_dataset(tiny_gad_rows(2), tokenizer=tok)


def test_iterable_dataset_is_checked_lazily(tok):
    rows = tiny_gad_rows(2) + [{"prompt": [{"role": "user", "content": "x"}], "teacher_response": ""}]
    stream = prepare_gad_dataset(Dataset.from_list(rows).to_iterable_dataset(), tokenizer=tok)
    with pytest.raises(GADDataError, match=r"Row 2: column 'teacher_response' is an empty string"):
        list(stream)
