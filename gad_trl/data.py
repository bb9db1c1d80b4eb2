"""Normalise and validate GAD data sets: one row per prompt, with the teacher's response as text.

Accepted prompt formats (docs/algorithm.md, "Data"):
- TRL conversational: `prompt` = list of `{"role", "content"}` messages;
- verl / GAD parquet: `content` = list of messages (renamed to `prompt`);
- standard: `prompt` = a plain string.
The teacher response is one answer (a string, an assistant message, or a list of one) or k answers (a list of k strings
or assistant messages); it becomes a string, or a list of strings when some row has several. Every problem
is a `GADDataError` naming the row and the column, never a silent skip.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

PROMPT_COLUMN = "prompt"
VERL_PROMPT_COLUMN = "content"


class GADDataError(ValueError):
    """A data set row that GAD cannot train on; the message names the row, the column and the fix."""


class GADDataTypeError(GADDataError, TypeError):
    """A data set of the wrong type: a `TypeError` too, as TRL raises for it (its tests match either)."""


# Roles the chat templates of instruct models know; anything else is a typo that a template would drop or mangle.
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")
_TEXT_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")


def check_data_file(path: str) -> None:
    """Fail clearly on a local text data file that `datasets` would mis-read: an empty file (its JSON loader raises
    a bare StopIteration) or bytes that are not UTF-8 (replaced silently on load). Names the file and the line."""
    if not str(path).lower().endswith(_TEXT_DATA_SUFFIXES):
        return
    empty = True
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise GADDataError(
                    f"{path}, line {number}: byte {line[err.start:err.start + 1]!r} at column {err.start + 1} is not "
                    "UTF-8. Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix that row."
                ) from None
            empty = empty and not text.strip()
    if empty:
        raise GADDataError(f"{path} is empty: a GAD data set needs one row per prompt with the teacher's response.")


def _is_message(obj: Any) -> bool:
    return isinstance(obj, dict) and "role" in obj and "content" in obj


def normalize_prompt(value: Any, row: int | str, column: str) -> str | list[dict]:
    """Return the prompt as TRL expects it (a string or a list of messages), or raise `GADDataError`."""
    if isinstance(value, str):
        if not value.strip():
            raise GADDataError(f"Row {row}: column '{column}' is an empty string; every row needs a prompt.")
        return value
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise GADDataError(f"Row {row}: column '{column}' is an empty message list; every row needs a prompt.")
        messages = []
        for j, message in enumerate(value):
            if not _is_message(message):
                raise GADDataError(
                    f"Row {row}: column '{column}' message {j} is {type(message).__name__} {message!r:.80}; expected "
                    "a dict with 'role' and 'content' keys (TRL conversational format)."
                )
            if message["role"] not in MESSAGE_ROLES:
                raise GADDataError(
                    f"Row {row}: column '{column}' message {j} has role {message['role']!r}; expected one of "
                    f"{', '.join(MESSAGE_ROLES)}."
                )
            if not isinstance(message["content"], str):
                raise GADDataError(
                    f"Row {row}: column '{column}' message {j} has content of type "
                    f"{type(message['content']).__name__}; GAD expects text content (a string)."
                )
            messages.append({"role": message["role"], "content": message["content"]})
        if messages[-1]["role"] == "assistant":
            raise GADDataError(
                f"Row {row}: column '{column}' ends with an assistant message; the prompt must end with the turn the "
                "student answers (put the teacher's answer in the teacher response column instead)."
            )
        return messages
    raise GADDataError(
        f"Row {row}: column '{column}' has type {type(value).__name__}; expected a string or a list of "
        "{'role', 'content'} messages."
    )


def answer_text(value: Any, row: int | str, column: str, where: str = "") -> str:
    """One teacher answer (a string or an assistant message) as a non-empty string, or `GADDataError`."""
    if isinstance(value, dict):
        if not _is_message(value):
            raise GADDataError(
                f"Row {row}: column '{column}'{where} is a dict without 'role'/'content'; expected a string or an "
                "assistant message."
            )
        if value["role"] != "assistant":
            raise GADDataError(
                f"Row {row}: column '{column}'{where} holds a '{value['role']}' message; a teacher answer must be an "
                "assistant message."
            )
        if value.get("tool_calls"):
            raise GADDataError(
                f"Row {row}: column '{column}'{where} is one assistant message with tool_calls: give the whole "
                "trajectory as a list (the tool-calling turns, the 'tool' results, the final answer)."
            )
        value = value["content"]
    if value is None:
        raise GADDataError(
            f"Row {row}: column '{column}'{where} is None. Every prompt needs the teacher's answer; drop or fill such "
            "rows before training (e.g. dataset.filter(lambda r: r[column] is not None))."
        )
    if not isinstance(value, str):
        raise GADDataError(
            f"Row {row}: column '{column}'{where} has type {type(value).__name__}; a teacher answer must be text."
        )
    if not value.strip():
        raise GADDataError(
            f"Row {row}: column '{column}'{where} is an empty string; the discriminator needs the teacher's text to "
            "compare."
        )
    return value


def is_trajectory(value: Any) -> bool:
    """A tool-using teacher trajectory: a list of messages with a `tool` message or an assistant `tool_calls`."""
    return (isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(m, dict) for m in value)
            and any(m.get("role") == "tool" or m.get("tool_calls") for m in value))


def _tool_call(call: Any, row, column: str, where: str) -> dict:
    """One OpenAI-style tool call with its arguments as a JSON string: an Arrow column then holds any arguments
    unchanged (dicts of varying keys would be unified, missing keys filled with None)."""
    import json

    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise GADDataError(
            f"Row {row}: column '{column}'{where} has a tool call without a function name; expected "
            "{'type': 'function', 'function': {'name': ..., 'arguments': {...}}} (OpenAI format)."
        )
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except json.JSONDecodeError as err:
            raise GADDataError(f"Row {row}: column '{column}'{where}: the arguments of tool call "
                               f"{function['name']!r} are not JSON ({err}).") from None
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        raise GADDataError(f"Row {row}: column '{column}'{where}: the arguments of tool call {function['name']!r} must "
                           f"be a JSON object, got {type(parsed).__name__}.")
    return {"type": "function", "id": call.get("id"),
            "function": {"name": function["name"], "arguments": json.dumps(parsed)}}


def normalize_trajectory(value: list, row: int | str, column: str, where: str = "") -> list[dict]:
    """A teacher trajectory (assistant turns with `tool_calls`, `tool` results, a final assistant answer) as messages of
    one fixed shape: `{"role", "content", "name", "tool_calls", "tool_call_id"}` (unused keys None), or
    `GADDataError`."""
    messages = []
    for j, message in enumerate(value):
        at = f"{where} message {j}"
        if not _is_message(message) and not (isinstance(message, dict) and message.get("tool_calls")):
            raise GADDataError(f"Row {row}: column '{column}'{at} is not a message with 'role' and 'content'.")
        role = message.get("role")
        if role not in ("assistant", "tool"):
            raise GADDataError(
                f"Row {row}: column '{column}'{at} has role {role!r}; a teacher trajectory holds only 'assistant' "
                "turns and 'tool' results (earlier user turns belong in the prompt)."
            )
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise GADDataError(f"Row {row}: column '{column}'{at} has content of type {type(content).__name__}; "
                               "GAD expects text content.")
        calls = message.get("tool_calls") or None
        if calls is not None and role != "assistant":
            raise GADDataError(f"Row {row}: column '{column}'{at}: only assistant messages make tool calls.")
        if role == "assistant" and calls is None and not content.strip():
            raise GADDataError(f"Row {row}: column '{column}'{at} is an empty assistant turn without tool calls.")
        messages.append({
            "role": role,
            "content": content,
            "name": message.get("name") if role == "tool" else None,
            "tool_calls": [_tool_call(c, row, column, at) for c in calls] if calls else None,
            "tool_call_id": message.get("tool_call_id"),
        })
    _check_calls_answered(messages, row, column, where)
    last = messages[-1]
    if last["role"] != "assistant" or last["tool_calls"] or not last["content"].strip():
        raise GADDataError(
            f"Row {row}: column '{column}'{where}: a teacher trajectory must end with the final assistant answer (text, "
            "no tool calls); the discriminator scores that turn's last token."
        )
    return messages


def _check_calls_answered(messages: list[dict], row, column: str, where: str) -> None:
    """Every tool call gets its result before the next assistant turn, and every result answers a call: a trajectory
    missing either would teach the discriminator (and the SFT term) a conversation no rollout can produce. A result
    with a `tool_call_id` answers the call of that id; one without answers the oldest unanswered call."""
    pending: list[dict] = []
    for j, message in enumerate(messages):
        at = f"{where} message {j}"
        if message["role"] == "assistant":
            if pending:
                names = ", ".join(repr(c["function"]["name"]) for c in pending)
                raise GADDataError(
                    f"Row {row}: column '{column}'{at} is an assistant turn, but the tool call(s) {names} before it "
                    "have no 'tool' result. Add a {'role': 'tool', 'content': <result>} message after each call "
                    "(the trajectory as the tool loop ran it), or drop the row."
                )
            pending = list(message["tool_calls"] or [])
            continue
        call_id = message["tool_call_id"]
        match = next((c for c in pending if call_id is not None and c["id"] == call_id), None)
        if match is None and pending and (call_id is None or all(c["id"] is None for c in pending)):
            match = pending[0]
        if match is None:
            what = f"tool_call_id {call_id!r} matches no" if call_id is not None and pending else "answers no"
            raise GADDataError(
                f"Row {row}: column '{column}'{at} is a 'tool' result that {what} tool call of the assistant turn "
                "before it. Each result must follow the assistant message whose tool_calls made the call (with the "
                "call's id as tool_call_id when calls have ids); fix or drop the row."
            )
        pending.remove(match)


def trajectory_tool_names(answer: str | list[dict]) -> list[str]:
    """The names of the tools a teacher answer calls (none for a text answer), in order, without repeats."""
    if isinstance(answer, str):
        return []
    names = [c["function"]["name"] for m in answer for c in (m.get("tool_calls") or [])]
    return list(dict.fromkeys(names))


def normalize_teacher_responses(value: Any, row: int | str, column: str) -> list:
    """The teacher answers of a row as a non-empty list, or `GADDataError`. Each answer is a string, or a tool-using
    trajectory (`normalize_trajectory`).

    A row holds one answer (a string, an assistant message, a list of one, or one trajectory: a list of messages with
    tool calls / results) or k answers to the same prompt (a list of k of those; k may differ between rows). A list
    mixing user turns into the answers is refused: a teacher column holds answers, not the conversation."""
    if is_trajectory(value):
        return [normalize_trajectory(list(value), row, column)]
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise GADDataError(
                f"Row {row}: column '{column}' is an empty list; give at least one teacher answer (a string, or a "
                "list of answer strings / assistant messages)."
            )
        answers = []
        for j, v in enumerate(value):
            where = f" answer {j}" if len(value) > 1 else ""
            answers.append(normalize_trajectory(list(v), row, column, where) if is_trajectory(v)
                           else answer_text(v, row, column, where))
        return answers
    return [answer_text(value, row, column)]


def as_trajectory(answer: str | list[dict], row: int | str, column: str) -> list[dict]:
    """A teacher answer as a trajectory: a text answer in a column of trajectories is one given without calling a
    tool, i.e. a trajectory of its final turn alone."""
    return answer if not isinstance(answer, str) else normalize_trajectory(
        [{"role": "assistant", "content": answer}], row, column)


def _as_trajectories(value, row: int | str, column: str):
    """A normalised teacher value (one answer, or a list of k) with each text answer made a trajectory."""
    if isinstance(value, list) and value and not isinstance(value[0], dict):
        return [as_trajectory(a, row, column) for a in value]
    return as_trajectory(value, row, column)


def normalize_teacher_response(value: Any, row: int | str, column: str) -> str:
    """The one teacher answer of a row as a non-empty string, or `GADDataError` (also for a row with several
    answers: use `normalize_teacher_responses` where k answers are accepted)."""
    answers = normalize_teacher_responses(value, row, column)
    if len(answers) != 1:
        raise GADDataError(
            f"Row {row}: column '{column}' holds {len(answers)} teacher answers where one is expected here; give one "
            "answer per row, or use a command that takes k answers (gad-trl gad / seqkd / soda)."
        )
    return answers[0]


def teacher_answers(value: Any) -> list:
    """The answers of an already normalised teacher column value (`prepare_gad_dataset`): a string or a trajectory (one
    answer), or a list of k of them."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return [value]
    return list(value)


def check_teacher_tools(dataset, column: str, tools_of_row, split_name: str = "train") -> None:
    """Refuse a teacher trajectory that calls a tool the student does not have: the discriminator would learn that the
    teacher is the one calling it. `tools_of_row(row_index)` gives the tool names the student has for that row (its
    environment's, or the trainer's `tools`); None skips the row. Map-style data sets only (an iterable one is not
    read ahead)."""
    if not isinstance(dataset, Dataset) or column not in dataset.column_names:
        return
    for i, value in enumerate(dataset[column]):
        allowed = tools_of_row(i)
        if allowed is None:
            continue
        for j, answer in enumerate(teacher_answers(value)):
            unknown = [n for n in trajectory_tool_names(answer) if n not in allowed]
            if unknown:
                raise GADDataError(
                    f"Row {i} of the {split_name} set: the teacher trajectory in column '{column}' (answer {j}) calls "
                    f"the tool {unknown[0]!r}, which the student does not have (its tools: "
                    f"{', '.join(sorted(allowed)) or 'none'}). Give the trainer that tool (tools=[...] or the "
                    "environment's methods), or fix or drop the row."
                )


def _prompt_source_column(column_names: list[str] | None, teacher_column: str) -> str:
    if column_names is None:  # iterable data set with unknown features: TRL's name, checked per row
        return PROMPT_COLUMN
    if teacher_column not in column_names:
        raise GADDataError(
            f"The data set has no teacher response column '{teacher_column}' (columns: {column_names}). Add the "
            "teacher's answers, or point GADConfig.teacher_response_column at the column that holds them."
        )
    if PROMPT_COLUMN in column_names:
        return PROMPT_COLUMN
    if VERL_PROMPT_COLUMN in column_names:
        return VERL_PROMPT_COLUMN
    raise GADDataError(
        f"The data set has no prompt column: expected 'prompt' (TRL format) or 'content' (verl/GAD format), got "
        f"columns {column_names}."
    )


def prepare_gad_dataset(
    dataset: Dataset | IterableDataset,
    teacher_response_column: str = "teacher_response",
    tokenizer=None,
    split_name: str = "train",
    teacher_special_tokens: str = "text",
    max_prompt_tokens: int | None = None,
    max_prompt_tokens_reason: str = "",
) -> Dataset | IterableDataset:
    """Validate and normalise a GAD data set; returns a data set with `prompt` and `teacher_response_column`.

    Map-style data sets are checked eagerly, row by row, so a bad row fails before any training. Iterable data sets
    are checked lazily, as rows stream in. With a `tokenizer`:
    - `teacher_special_tokens="error"`: a teacher response holding a special-token string (`<|im_end|>`, ...) is an
      error naming the row (with `"text"`, the default, such strings are encoded as plain text by
      `teacher_completion_ids`);
    - `max_prompt_tokens`: a prompt longer than this many tokens (as the student reads it) is an error naming the row
      and `max_prompt_length`; `max_prompt_tokens_reason` says where the limit comes from.
    """
    if teacher_special_tokens not in TEACHER_SPECIAL_TOKENS:
        raise ValueError(f"teacher_special_tokens={teacher_special_tokens!r}; expected one of {TEACHER_SPECIAL_TOKENS}.")
    specials = special_token_strings(tokenizer) if tokenizer is not None else []
    # TRL's wording first (GRPOTrainer's own check, which this one pre-empts), then GAD's fix.
    trl_wording = (f"`{'train' if split_name == 'train' else 'eval'}_dataset` must be a `Dataset` or `IterableDataset`, "
                   f"got `{type(dataset).__name__}`.")
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        raise GADDataTypeError(
            f"{trl_wording} Got a {type(dataset).__name__} with splits {list(dataset)} for the {split_name} set; pass "
            "one split, e.g. dataset['train']."
        )
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise GADDataTypeError(
            f"{trl_wording} The {split_name} set must be a datasets.Dataset or IterableDataset. Build one with "
            "Dataset.from_list(rows) or load_dataset(...)."
        )
    column_names = dataset.column_names
    source = _prompt_source_column(column_names, teacher_response_column)
    needs_template: list[bool] = []

    def normalize(row: dict, index: int) -> dict:
        if source not in row or teacher_response_column not in row:
            missing = source if source not in row else teacher_response_column
            raise GADDataError(f"Row {index}: column '{missing}' is missing.")
        prompt = normalize_prompt(row[source], index, source)
        if not needs_template and isinstance(prompt, list):
            needs_template.append(True)
            _check_chat_template(tokenizer, index, source)
        responses = normalize_teacher_responses(row[teacher_response_column], index, teacher_response_column)
        for answer in responses:
            if isinstance(answer, list) and specials:  # a trajectory is rendered by the chat template, whose
                # tokenisation would read such a string as a control token: refused whatever the policy
                found = [t for m in answer for t in special_tokens_in(m["content"], specials)]
                if found:
                    raise GADDataError(
                        f"Row {index}: a teacher trajectory in column '{teacher_response_column}' contains the "
                        f"special-token string {found[0]!r}; trajectories are rendered by the chat template, which "
                        "would read it as a control token. Clean the row."
                    )
        if teacher_special_tokens == "error" and specials:
            found = [t for response in responses if isinstance(response, str)
                     for t in special_tokens_in(response, specials)]
            if found:
                raise GADDataError(
                    f"Row {index}: column '{teacher_response_column}' contains the special-token string "
                    f"{found[0]!r}; with teacher_special_tokens='error' such rows are refused. Clean the row, or set "
                    "teacher_special_tokens='text' to encode it as plain text."
                )
        if max_prompt_tokens is not None and tokenizer is not None:
            length = student_prompt_length(tokenizer, prompt)
            if length > max_prompt_tokens:
                raise GADDataError(
                    f"Row {index}: the prompt is {length} tokens, longer than the {max_prompt_tokens} the run allows "
                    f"({max_prompt_tokens_reason}). Drop such rows with --max_prompt_length {max_prompt_tokens} "
                    "(gad-trl gad / train) or filter them before building the trainer, or lower max_completion_length."
                )
        return {PROMPT_COLUMN: prompt, teacher_response_column: responses[0] if len(responses) == 1 else responses}

    if isinstance(dataset, Dataset):
        rows = [normalize(row, i) for i, row in enumerate(dataset)]
        if not rows:
            raise GADDataError(f"The {split_name} set is empty.")
        # Rebuild rather than .map(): the normalised prompt may change type (verl's 'content' column, mixed
        # message/str rows are rejected above), and rows are already in memory after validation.
        others = [c for c in column_names if c not in (source, PROMPT_COLUMN, teacher_response_column)]
        answers = [r[teacher_response_column] for r in rows]
        if any(len(teacher_answers(a)) > 1 for a in answers):  # Arrow holds one type per column: every row a list
            answers = [teacher_answers(a) for a in answers]
        if len({isinstance(a, str) for r in answers for a in teacher_answers(r)}) > 1:
            # A column of trajectories: an answer given without calling a tool is a trajectory of its final turn
            # alone (a tool-using teacher may answer directly), rendered like a student rollout without a call.
            answers = [_as_trajectories(a, i, teacher_response_column) for i, a in enumerate(answers)]
        columns = {PROMPT_COLUMN: [r[PROMPT_COLUMN] for r in rows], teacher_response_column: answers}
        for c in others:
            columns[c] = dataset[c]
        _check_one_prompt_format(columns[PROMPT_COLUMN], split_name)
        return Dataset.from_dict(columns)

    # Iterable: validate lazily; errors carry the position in the stream (a row's answers: a string, or a list of k).
    counter = iter(range(1 << 62))

    def normalize_stream(row):
        return normalize(row, next(counter))

    mapped = dataset.map(normalize_stream)
    if source != PROMPT_COLUMN:
        mapped = mapped.remove_columns([source])
    return mapped


def _check_one_prompt_format(prompts: list, split_name: str) -> None:
    """Arrow stores one type per column, and TRL templates conversational rows only: a mix is an error naming the
    first row whose format differs from row 0's."""
    first = isinstance(prompts[0], list)
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list) != first:
            kinds = ("a message list", "a plain string")
            raise GADDataError(
                f"Row {i} of the {split_name} set has {kinds[0] if not first else kinds[1]} as its prompt, but row 0 "
                f"has {kinds[0] if first else kinds[1]}: the set mixes conversational and plain-text prompts. Use one "
                "format (e.g. wrap plain prompts as [{'role': 'user', 'content': text}])."
            )


def _check_chat_template(tokenizer, row: int, column: str) -> None:
    if tokenizer is None:
        return
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise GADDataError(
            f"Row {row}: column '{column}' holds chat messages but the tokenizer has no chat template. Set one "
            "(tokenizer.chat_template = ...), use an instruct checkpoint, or give plain-text prompts."
        )


# --------------------------------------------------------------------------------------------------------------------
# Rows -> tokens: the one place where prompts and teacher responses become the token ids the discriminator reads.
# The "symmetry" rule (docs/algorithm.md): a teacher response is tokenised without special tokens, followed by the
# token a finished student completion ends with, and cut at max_completion_length like a student completion, so the
# discriminator cannot tell the two sides apart by their framing. The trainer, the held-out evaluation, the length
# analysis and the benchmarks all call these functions.
# --------------------------------------------------------------------------------------------------------------------


def prompt_messages(row: dict, index: int | str | None = None) -> list[dict]:
    """The prompt of a GAD row as chat messages: TRL `prompt` (messages or text) or verl `content` (messages).

    Validation is `normalize_prompt`'s (the trainer's), so every command rejects exactly the rows the trainer rejects.
    """
    if row.get(PROMPT_COLUMN) is not None:
        column = PROMPT_COLUMN
    elif row.get(VERL_PROMPT_COLUMN) is not None:
        column = VERL_PROMPT_COLUMN
    else:
        raise GADDataError(f"Row {index}: no prompt; expected a 'prompt' (TRL) or 'content' (verl) column.")
    prompt = normalize_prompt(row[column], index, column)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return prompt


def teacher_text(row: dict, column: str = "teacher_response", index: int | str | None = None) -> str:
    """The teacher's one answer of a row as text; a missing or empty answer is an error naming the row and the column."""
    if column not in row:
        raise GADDataError(f"Row {index}: the teacher response column '{column}' is missing (columns: {sorted(row)}).")
    return normalize_teacher_response(row[column], index, column)


def teacher_texts(row: dict, column: str = "teacher_response", index: int | str | None = None) -> list[str]:
    """All teacher answers of a row (one or k) as texts; errors as `teacher_text`."""
    if column not in row:
        raise GADDataError(f"Row {index}: the teacher response column '{column}' is missing (columns: {sorted(row)}).")
    return normalize_teacher_responses(row[column], index, column)


def text_answers(row: dict, column: str, index: int | str | None, where: str) -> list[str]:
    """All teacher answers of a row as texts, for a consumer that reads text only (`where` names it): a tool-using
    trajectory is refused there with an error that says so, rather than being flattened silently."""
    answers = teacher_texts(row, column, index)
    if any(not isinstance(a, str) for a in answers):
        raise GADDataError(
            f"Row {index}: column '{column}' holds a tool-using teacher trajectory; {where} reads text answers only. "
            "Train on trajectories with gad-trl gad (GADTrainer with tools=...), or give this command text answers."
        )
    return answers


def final_answer_text(answer: str | list[dict]) -> str:
    """A teacher answer as the text a reader compares against: the answer itself, or a trajectory's last assistant
    content (its final answer; the tool calls before it are the way there)."""
    if isinstance(answer, str):
        return answer
    return next((m["content"] for m in reversed(answer) if m["role"] == "assistant" and m.get("content")), "")


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat-templated prompt with the generation prompt: the text the student continues."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `prompt_text` (no special tokens added: the template wrote them), as the student reads it."""
    return tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]


def prompt_token_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of the prompt as the student reads it (`prompt_ids`); without a chat template, the joined contents."""
    if tokenizer.chat_template is None:
        return len(tokenizer("\n".join(m["content"] for m in messages))["input_ids"])
    return len(prompt_ids(tokenizer, messages))


TEACHER_SPECIAL_TOKENS = ("text", "error")


def special_token_strings(tokenizer) -> list[str]:
    """The strings this tokenizer would read as control tokens: its named special tokens and the added tokens marked
    special (e.g. `<|im_end|>`, `<|endoftext|>`), longest first."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            tokens.add(getattr(token, "content", str(token)))
    return sorted((t for t in tokens if t), key=lambda t: (-len(t), t))


def special_tokens_in(text: str, specials: list[str]) -> list[str]:
    """Which of `specials` (`special_token_strings`) occur literally in `text`."""
    return [t for t in specials if t in text]


def student_prompt_length(tokenizer, prompt: str | list[dict]) -> int:
    """Tokens of a normalised prompt as TRL's `GRPOTrainer` feeds it to the student: chat-templated messages, or a
    plain string tokenised as it is."""
    if isinstance(prompt, list):
        return prompt_token_length(tokenizer, prompt)
    return len(tokenizer(text=prompt)["input_ids"])


def row_prompt_length(tokenizer, row: dict, index: int | str | None = None) -> int:
    """`student_prompt_length` of a raw row's prompt (TRL `prompt` or verl `content`), validated as the trainer does."""
    column = PROMPT_COLUMN if row.get(PROMPT_COLUMN) is not None else VERL_PROMPT_COLUMN
    if row.get(column) is None:
        raise GADDataError(f"Row {index}: no prompt; expected a 'prompt' (TRL) or 'content' (verl) column.")
    return student_prompt_length(tokenizer, normalize_prompt(row[column], index, column))


def teacher_completion_ids(
    tokenizer, response: str, end_token_id: int | None, max_completion_length: int | None = None
) -> tuple[list[int], bool]:
    """A response's tokens as a finished student completion looks: no special tokens, then `end_token_id` (the
    end-of-turn token, `end_of_turn.end_of_turn_token_id`; None for an unfinished response), cut to
    `max_completion_length` like a student completion. Returns `(ids, truncated)`.

    Special-token strings inside the text (a literal `<|im_end|>` in a teacher answer) are encoded as the plain text
    they are (`split_special_tokens`): read as control tokens they would be an instant tell for the discriminator, and
    the only end-of-turn token of a response is the one appended here (docs/algorithm.md, "Symmetry")."""
    ids = tokenizer(text=response, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if end_token_id is not None:
        ids = ids + [end_token_id]
    if max_completion_length is not None and len(ids) > max_completion_length:
        return ids[:max_completion_length], True
    return ids, False


def encode_pair(
    tokenizer,
    prompt: list[dict],
    response: str,
    finished: bool = True,
    end_token_id: int | None = None,
    max_completion_length: int | None = None,
) -> list[int]:
    """Token ids the discriminator reads for (prompt, response): `prompt_ids` + `teacher_completion_ids`.

    `finished` responses end with `end_token_id` (default: the token the chat template closes assistant turns with,
    as in training); `max_completion_length` cuts the response as the trainer cuts it.
    """
    if finished and end_token_id is None:
        from .end_of_turn import end_of_turn_token_id

        end_token_id = end_of_turn_token_id(tokenizer)
    completion, _ = teacher_completion_ids(
        tokenizer, response, end_token_id if finished else None, max_completion_length
    )
    return prompt_ids(tokenizer, prompt) + completion


FILE_BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".arrow": "arrow",
}


def load_any_dataset(dataset_name: str, dataset_config: str | None = None, streaming: bool = False):
    """Load a `DatasetDict` from a Hub id, a local directory or a single data file.

    - `.parquet` / `.json` / `.jsonl` / `.csv` / `.arrow` file: `load_dataset(<builder>, data_files=path)`, giving a
      `train` split; a `{split}` placeholder in the path (e.g. `data/{split}.parquet`) loads every split that exists.
    - a directory written by `save_to_disk`: `load_from_disk`;
    - any other directory (e.g. `train.parquet` + `test.parquet`) or a Hub id: `load_dataset(dataset_name, ...)`.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    from .preflight import looks_like_local_path

    path = Path(os.path.expanduser(dataset_name))
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix in FILE_BUILDERS:
        builder = FILE_BUILDERS[suffix]
        if "{split}" in str(path):
            data_files = {
                split: str(path).replace("{split}", split)
                for split in ("train", "validation", "test")
                if Path(str(path).replace("{split}", split)).exists()
            }
            if not data_files:
                raise FileNotFoundError(f"No file matches {dataset_name!r} for the splits train/validation/test.")
        else:
            if not path.exists():
                raise FileNotFoundError(f"Data file {dataset_name!r} does not exist.")
            data_files = str(path)
        for file in [data_files] if isinstance(data_files, str) else data_files.values():
            check_data_file(file)
        if isinstance(data_files, dict):
            return _load_splits_apart(builder, data_files, streaming)
        return load_dataset(builder, data_files=data_files, streaming=streaming)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds = load_from_disk(str(path))
        return ds if isinstance(ds, DatasetDict) else DatasetDict({"train": ds})
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            check_data_file(str(file))
        split_files = _local_split_files(path)
        if split_files is not None:
            return _load_splits_apart(*split_files, streaming)
    elif looks_like_local_path(dataset_name):
        from .preflight import missing_local_path_message

        raise FileNotFoundError(missing_local_path_message(dataset_name, "data path"))
    with _explained_split_types(dataset_name):
        ds = load_dataset(dataset_name, name=dataset_config, streaming=streaming)
    if isinstance(ds, Dataset):
        ds = DatasetDict({"train": ds})
    return ds


def _local_split_files(path: Path) -> tuple[str, dict[str, list[str]]] | None:
    """The data files of each split of a local folder, as `load_dataset(folder)` finds them (its split patterns), and
    their builder; None when the folder is not of one file type GAD knows (`load_dataset` then reads it itself)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except Exception:  # noqa: BLE001 - no pattern matched: let load_dataset report it
        return None
    builders = {FILE_BUILDERS.get(Path(f).suffix.lower()) for split in files.values() for f in split}
    if len(builders) != 1 or None in builders:
        return None
    return builders.pop(), {split: list(split_files) for split, split_files in files.items()}


def _load_splits_apart(builder: str, data_files: dict, streaming: bool):
    """Each split loaded on its own: `load_dataset` casts every split to one schema, so a teacher column of answer
    lists in train and single strings in test would fail with a bare TypeError; apart, `prepare_gad_dataset`
    normalises each split."""
    from datasets import load_dataset

    splits = {split: load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)
              for split, files in data_files.items()}
    return IterableDatasetDict(splits) if streaming else DatasetDict(splits)


@contextmanager
def _explained_split_types(dataset_name: str):
    """`datasets`' cast error between splits (a column typed differently in two splits) as a `GADDataError`."""
    try:
        yield
    except Exception as err:
        cause = err
        while cause is not None and not (isinstance(cause, TypeError) and "Couldn't cast" in str(cause)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise GADDataError(
            f"{dataset_name}: a column has different types in different splits ({' '.join(str(cause).split())}); "
            "e.g. the teacher column holds lists of answers in one split and single strings in another. `datasets` "
            "loads all splits with one schema: give every split the same form (wrap a single answer as a one-element "
            "list), or load each split from its own file (e.g. --dataset_name data/{split}.jsonl)."
        ) from err

