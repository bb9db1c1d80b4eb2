"""Data normalisation and the errors that name the row, the column and the fix."""

from __future__ import annotations

import warnings

import pytest
from datasets import Dataset

from gad_trl.data import GADDataError, load_any_dataset, prepare_gad_dataset, teacher_completion_ids
from gad_trl.tiny import build_tiny_tokenizer, tiny_gad_rows, tiny_tool_rows
from tests.helpers.gad_helpers import SMUGGLED, make_args, make_trainer, special_ids


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


def _call(name="add", call_id=None, a=1, b=2):
    call = {"type": "function", "function": {"name": name, "arguments": {"a": a, "b": b}}}
    return {**call, "id": call_id} if call_id else call


def _row(trajectory):
    return {"prompt": [{"role": "user", "content": "add 1 and 2"}], "teacher_response": trajectory}


def test_bad_data_files_are_named(tmp_path):
    from gad_trl.cli.utils import load_any_dataset
    from gad_trl.data import GADDataError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(GADDataError, match="empty.jsonl is empty"):
        load_any_dataset(str(empty))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "ok", "teacher_response": "ok"}\n{"prompt": "caf\xe9", "teacher_response": "x"}\n')
    with pytest.raises(GADDataError, match=r"latin1.jsonl, line 2: byte b'\\xe9' at column 16 is not UTF-8"):
        load_any_dataset(str(latin1))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(latin1.read_bytes())
    with pytest.raises(GADDataError, match="train.jsonl, line 2"):
        load_any_dataset(str(folder))


def test_unknown_role_and_bad_settings_are_clear_errors(tiny_model_dir, tmp_path):
    from gad_trl import GADTrainer
    from gad_trl.cli.launch import command_line_checks
    from gad_trl.data import GADDataError, normalize_prompt

    with pytest.raises(GADDataError, match="role 'usr'; expected one of system"):
        normalize_prompt([{"role": "usr", "content": "hi"}], 3, "prompt")
    with pytest.raises(ValueError, match="max_completion_length must be a positive"):
        make_args(tmp_path, max_completion_length=0)
    with pytest.raises(ValueError, match="--config is given 2 times"):
        command_line_checks(["--config", "a.yaml", "--config=b.yaml"])
    with pytest.warns(UserWarning, match="student stays frozen for the whole run"):
        make_args(tmp_path, max_steps=5, critic_warmup_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_args(tmp_path, max_steps=6, critic_warmup_steps=5)
    missing = str(tmp_path / "no" / "such-model")
    with pytest.raises(FileNotFoundError, match="looks like a local folder but does not exist"):
        GADTrainer(missing, args=make_args(tmp_path), train_dataset=Dataset.from_list(tiny_gad_rows(4)))
    with pytest.raises(FileNotFoundError, match="discriminator_model_name_or_path='./nope'"):
        GADTrainer(tiny_model_dir, args=make_args(tmp_path, discriminator_model_name_or_path="./nope"),
                   train_dataset=Dataset.from_list(tiny_gad_rows(4)))


def test_special_token_strings_in_teacher_text_are_plain_text(tok):
    ids, _ = teacher_completion_ids(tok, SMUGGLED, tok.eos_token_id)
    # Only the appended end-of-turn token is a control token; the literal strings became ordinary tokens...
    assert [i for i in ids if i in special_ids(tok)] == [tok.eos_token_id]
    assert ids[-1] == tok.eos_token_id
    # ...which decode back to the literal text.
    assert tok.decode(ids[:-1]).replace(" ", "") == SMUGGLED.replace(" ", "")
    # Without the fix the tokenizer reads them as control tokens (what the probe saw).
    plain = tok(SMUGGLED, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|im_end|>") in plain


def test_teacher_special_tokens_error_names_the_row(tiny_model_dir, tmp_path):
    rows = tiny_gad_rows(8, seed=0)
    rows[5]["teacher_response"] = SMUGGLED
    with pytest.raises(GADDataError, match=r"Row 5: column 'teacher_response' contains the special-token string"):
        make_trainer(tiny_model_dir, tmp_path, rows=rows, teacher_special_tokens="error")
    with pytest.raises(ValueError, match="teacher_special_tokens='typo' is not one of"):
        make_args(tmp_path, teacher_special_tokens="typo")


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


# ---------------------------------------------------------------------------------------------------- 1. trajectories
def test_tool_call_without_result_is_refused_naming_the_row():
    rows = tiny_tool_rows(2)
    rows[1]["teacher_response"] = [
        {"role": "assistant", "content": "", "tool_calls": [_call()]},
        {"role": "assistant", "content": "1 plus 2 equals 3"},
    ]
    with pytest.raises(GADDataError, match=r"Row 1: .*'add' before it have no 'tool' result.*Add a"):
        prepare_gad_dataset(Dataset.from_list(rows))


def test_tool_result_without_call_is_refused():
    no_call = [{"role": "tool", "name": "add", "content": "3"}, {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match=r"Row 0: .*message 0 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(no_call)]))
    extra = [{"role": "assistant", "content": "", "tool_calls": [_call()]},
             {"role": "tool", "name": "add", "content": "3"}, {"role": "tool", "name": "add", "content": "3"},
             {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="message 2 is a 'tool' result that answers no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(extra)]))
    wrong_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1")]},
                {"role": "tool", "name": "add", "content": "3", "tool_call_id": "c9"},
                {"role": "assistant", "content": "3"}]
    with pytest.raises(GADDataError, match="tool_call_id 'c9' matches no tool call"):
        prepare_gad_dataset(Dataset.from_list([_row(wrong_id)]))


def test_answered_calls_pass_by_id_and_by_order():
    by_id = [{"role": "assistant", "content": "", "tool_calls": [_call(call_id="c1"), _call(call_id="c2", a=2)]},
             {"role": "tool", "content": "4", "tool_call_id": "c2"}, {"role": "tool", "content": "3",
                                                                     "tool_call_id": "c1"},
             {"role": "assistant", "content": "3 and 4"}]
    ds = prepare_gad_dataset(Dataset.from_list([_row(by_id), *tiny_tool_rows(2)]))
    assert len(ds) == 3


# ------------------------------------------------------------- 5. answer lists in train, strings in test
@pytest.mark.parametrize("layout", ["folder", "split_placeholder"])
def test_list_answers_in_train_and_strings_in_test_load_and_normalise(tmp_path, layout):
    from gad_trl.data import load_any_dataset
    from gad_trl.tiny import tiny_gad_rows, write_jsonl

    rows = tiny_gad_rows(4)
    write_jsonl([dict(r, teacher_response=[r["teacher_response"], "another answer"]) for r in rows],
                tmp_path / "train.jsonl")
    write_jsonl(rows, tmp_path / "test.jsonl")
    splits = load_any_dataset(str(tmp_path) if layout == "folder" else str(tmp_path / "{split}.jsonl"))
    train, test = prepare_gad_dataset(splits["train"]), prepare_gad_dataset(splits["test"], split_name="eval")
    assert train[0]["teacher_response"] == [rows[0]["teacher_response"], "another answer"]
    assert test[0]["teacher_response"] == rows[0]["teacher_response"]


def test_a_cast_error_between_splits_is_explained():
    from datasets.exceptions import DatasetGenerationError

    from gad_trl.data import _explained_split_types

    with pytest.raises(GADDataError, match="different types in different splits.*one-element list"):
        with _explained_split_types("org/data"):
            try:
                raise TypeError("Couldn't cast array of type\nstring\nto\nList(Value('string'))")
            except TypeError as err:
                raise DatasetGenerationError("An error occurred while generating the dataset") from err

